"""Idempotency keys kept in a service's own table, inside the transaction that has the effect."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import grpc
from psycopg import AsyncConnection, sql

from shop_runtime.errors import ServiceError, invalid_argument

MAX_KEY_LENGTH = 255


def fingerprint(operation: str, *args: Any) -> bytes:
    """A digest of a call's operation and arguments: the same key must come with the same call."""
    return hashlib.sha256(json.dumps([operation, *args], sort_keys=True, default=str).encode()).digest()


def check_key(key: str) -> str:
    """The key if it is usable; an empty key means the call is not idempotent."""
    if len(key) > MAX_KEY_LENGTH:
        raise invalid_argument("idempotency_key", f"an idempotency key is at most {MAX_KEY_LENGTH} characters")
    return key


async def claim(conn: AsyncConnection, table: sql.Composable, operation: str, key: str,
                request_hash: bytes) -> bytes | None:
    """Claims `key` for this call; returns the stored answer if an earlier call with it committed.

    Must run first in the transaction, before any other lock: a concurrent call with the same
    key waits here on the key's row until the first commits (then replays it) or rolls back
    (then claims it), and holds nothing the first could be waiting for.
    """
    cur = await conn.execute(
        sql.SQL("INSERT INTO {} (operation, key, request_hash) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING 1").format(table),
        (operation, key, request_hash),
    )
    if await cur.fetchone() is not None:
        return None
    cur = await conn.execute(
        sql.SQL("SELECT request_hash, response FROM {} WHERE operation = %s AND key = %s").format(table),
        (operation, key),
    )
    stored_hash, response = await cur.fetchone()
    if bytes(stored_hash) != request_hash:
        raise ServiceError(grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_REUSED",
                           "this idempotency key was used for a different request", {"operation": operation})
    return bytes(response)


async def record(conn: AsyncConnection, table: sql.Composable, operation: str, key: str, response: bytes) -> None:
    """Stores the answer of the call that claimed `key`, in the same transaction as its effect."""
    await conn.execute(
        sql.SQL("UPDATE {} SET response = %s WHERE operation = %s AND key = %s").format(table),
        (response, operation, key),
    )
