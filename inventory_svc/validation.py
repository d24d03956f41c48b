"""Checks of the inventory's request values that several of its calls make the same way."""

from __future__ import annotations

import uuid

from shop_runtime.errors import invalid_argument

MAX_BATCH = 500
MAX_LINES = 100
MAX_TTL_SECONDS = 86_400
MAX_ON_HAND = 1_000_000
MAX_OWNER = 200


def check_ttl(ttl: int) -> int:
    if not 1 <= ttl <= MAX_TTL_SECONDS:
        raise invalid_argument("ttl_seconds", f"ttl_seconds must be within 1..{MAX_TTL_SECONDS}")
    return ttl


def check_text(value: str, field: str, maximum: int = MAX_OWNER) -> str:
    if not 1 <= len(value) <= maximum:
        raise invalid_argument(field, f"{field} must be 1..{maximum} characters")
    if "\x00" in value:  # Postgres takes no NUL in text: refused here, never a database error
        raise invalid_argument(field, f"{field} must not contain a NUL character")
    return value


def check_limit(limit: int) -> int:
    if limit < 0:
        raise invalid_argument("max_units_per_buyer", "max_units_per_buyer must be 0 (no limit) or more")
    return limit


def check_uuids(ids: list[str]) -> list[str]:
    for hold_id in ids:
        try:
            uuid.UUID(hold_id)
        except ValueError:
            raise invalid_argument("hold_ids", f"{hold_id!r} is not a hold id") from None
    return ids


def check_hold_ids(ids: list[str]) -> list[str]:
    if not ids:
        raise invalid_argument("hold_ids", "at least one hold id is required")
    if len(set(ids)) != len(ids):
        raise invalid_argument("hold_ids", "a hold id is named twice")
    if len(ids) > MAX_LINES:
        raise invalid_argument("hold_ids", f"at most {MAX_LINES} holds per call")
    return check_uuids(ids)
