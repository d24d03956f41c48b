"""Checks of request values that several services make the same way."""

from __future__ import annotations

from shop_runtime.errors import invalid_argument

# The store's one currency (ISO 4217): every price, total and amount of the suite is in its smallest unit.
CURRENCY = "IDR"
# The most a cart or an order may total, in CURRENCY: every amount reaches REST as a 32-bit JSON number.
MAX_TOTAL = 2_000_000_000


def distinct_batch(values: list[str], field: str, maximum: int) -> list[str]:
    """The values without repeats, in first-seen order; more than `maximum` is an INVALID_ARGUMENT."""
    unique = list(dict.fromkeys(values))
    if len(unique) > maximum:
        raise invalid_argument(field, f"at most {maximum} {field} per call")
    return unique


DEFAULT_PAGE = 1
DEFAULT_LIMIT = 10
MAX_LIMIT = 100


def page_and_limit(page: int | None, limit: int | None) -> tuple[int, int]:
    """A listing's page (1 or more, default 1) and page size (1..100, default 10)."""
    page = DEFAULT_PAGE if page is None else page
    limit = DEFAULT_LIMIT if limit is None else limit
    if page < 1:
        raise invalid_argument("page", f"page must be 1 or more, got {page}")
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid_argument("limit", f"limit must be within 1..{MAX_LIMIT}, got {limit}")
    return page, limit
