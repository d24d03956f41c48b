"""Validation of catalog listing parameters and the full-text query built from free text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shop_runtime.errors import invalid_argument
from shop_runtime.validation import page_and_limit

MAX_SEARCH_CHARS = 200
MAX_SEARCH_WORDS = 12
SORT_KEYS = ("sales", "price", "name", "newest")
SORT_DIRS = ("asc", "desc")
_CATEGORY_RE = re.compile(r"^[a-z0-9-]{1,64}$")
# Letters and digits only: anything else would be tsquery syntax, and '_' splits words in Postgres' parser.
_WORD_RE = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class ListQuery:
    """A validated catalog listing request."""

    page: int
    limit: int
    sort_by: str
    descending: bool
    category: str | None
    words: tuple[str, ...]

    @property
    def offset(self) -> int:
        """How many matches come before this page."""
        return (self.page - 1) * self.limit


def search_words(text: str) -> tuple[str, ...]:
    """The lower-cased words of a search text, in order, without repeats."""
    return tuple(dict.fromkeys(w.lower() for w in _WORD_RE.findall(text)))


def prefix_tsquery(words: tuple[str, ...]) -> str:
    """A tsquery text in which every word must match the start of a word: ('wire', 'mous') -> 'wire:* & mous:*'."""
    return " & ".join(f"{w}:*" for w in words)


def parse_list_query(
    *, page: int | None, limit: int | None, sort_by: str, sort_dir: str, category: str, search: str
) -> ListQuery:
    """Checks every parameter; the first bad one is an INVALID_ARGUMENT naming its field."""
    page, limit = page_and_limit(page, limit)
    sort_by = sort_by or "newest"
    if sort_by not in SORT_KEYS:
        raise invalid_argument("sortBy", f"sortBy must be one of {', '.join(SORT_KEYS)}")
    sort_dir = sort_dir or "desc"
    if sort_dir not in SORT_DIRS:
        raise invalid_argument("sortDir", "sortDir must be asc or desc")
    if category and not _CATEGORY_RE.match(category):
        raise invalid_argument("category", "category must be a category slug (a-z, 0-9, '-')")
    words: tuple[str, ...] = ()
    if search:
        if len(search) > MAX_SEARCH_CHARS:
            raise invalid_argument("search", f"search must be at most {MAX_SEARCH_CHARS} characters")
        words = search_words(search)
        if not words:
            raise invalid_argument("search", "search has no word to look for (letters or digits)")
        if len(words) > MAX_SEARCH_WORDS:
            raise invalid_argument("search", f"search must have at most {MAX_SEARCH_WORDS} words")
    return ListQuery(
        page=page,
        limit=limit,
        sort_by=sort_by,
        descending=sort_dir == "desc",
        category=category or None,
        words=words,
    )
