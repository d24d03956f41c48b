"""Checks of request values that several services make the same way."""

from __future__ import annotations

from shop_runtime.errors import invalid_argument


def distinct_batch(values: list[str], field: str, maximum: int) -> list[str]:
    """The values without repeats, in first-seen order; more than `maximum` is an INVALID_ARGUMENT."""
    unique = list(dict.fromkeys(values))
    if len(unique) > maximum:
        raise invalid_argument(field, f"at most {maximum} {field} per call")
    return unique
