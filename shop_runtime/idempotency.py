"""Idempotency keys kept in a service's own table, inside the transaction that has the effect.

A replay never acknowledges a commit that is only on the primary. A first call's commit may be visible on the
primary before any synchronous standby has it (its wait for the standby cancelled: shop_runtime.db.DurablePool, which
answers that call UNAVAILABLE); the retry with the same key then finds its stored answer. Before that answer is given
the replay passes a durability barrier: its own transaction writes to the write-ahead log under a transaction id, so
its COMMIT waits for a synchronous standby like any write, and its commit record comes after the earlier commit's
(which it saw committed). A replay whose COMMIT returns has the earlier commit on a standby; while no standby is in
sync it waits (strict synchronous mode), and a cancel of that wait is refused by DurablePool in turn.

The barrier is a row lock (FOR KEY SHARE) on the stored answer's row, taken by the read that finds it (`claim`,
`claim_many`): WAL-logged, it gives the transaction an id without another statement. A transaction id alone is not
enough: Postgres waits for the standby only for a transaction that both has an id and wrote WAL
(RecordTransactionCommit), so `SELECT pg_current_xact_id()` by itself commits at once. `durability_barrier` is the
same for a replay that reads its answer some other way.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Awaitable, Callable

from psycopg import AsyncConnection, sql

from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.reasons import refuse

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
    # FOR KEY SHARE is the replay's durability barrier (module docstring): no extra round trip, and only a replay
    # pays it.
    cur = await conn.execute(
        sql.SQL("SELECT request_hash, response FROM {} WHERE operation = %s AND key = %s FOR KEY SHARE").format(table),
        (operation, key),
    )
    row = await cur.fetchone()
    # The insert above found the key taken, and a key is never deleted inside a transaction that saw it.
    assert row is not None
    stored_hash, response = row
    if bytes(stored_hash) != request_hash:
        raise reused(operation)
    return bytes(response)


async def record(conn: AsyncConnection, table: sql.Composable, operation: str, key: str, response: bytes) -> None:
    """Stores the answer of the call that claimed `key`, in the same transaction as its effect."""
    await conn.execute(
        sql.SQL("UPDATE {} SET response = %s WHERE operation = %s AND key = %s").format(table),
        (response, operation, key),
    )


async def claim_many(conn: AsyncConnection, table: sql.Composable, calls: list[tuple[str, str, bytes]]
                     ) -> Callable[[], Awaitable[dict[tuple[str, str], tuple[bytes, bytes] | None]]]:
    """Claims the keys of several calls at once (`claim` for a batch). Sends the claim without waiting for its
    answer, so in pipeline mode it travels with the statements after it; the coroutine function it returns gives,
    once awaited, (operation, key) -> None when this transaction claimed the key now, else (stored request hash,
    stored answer) of the earlier call that committed.

    The same rule as `claim`: first in the transaction, before any lock (the server runs a pipeline's statements
    one after another, so a claim waiting for another transaction's key delays the locks after it). Keys are
    claimed in sorted order, so two batches sharing keys wait for each other in one order and cannot deadlock.
    """
    wanted = sorted({(op, key): digest for op, key, digest in calls}.items())
    ops, keys = [op for (op, _), _ in wanted], [key for (_, key), _ in wanted]
    claim = await conn.execute(
        _text(conn, table, "INSERT INTO {} (operation, key, request_hash)"
                           " SELECT * FROM unnest(%b::text[], %b::text[], %b::bytea[]) ORDER BY 1, 2"
                           " ON CONFLICT DO NOTHING RETURNING operation, key"),
        (ops, keys, [digest for _, digest in wanted]))
    # Run after the claim, so it sees what a transaction the claim waited for committed; this transaction's own
    # claims have no answer yet. FOR KEY SHARE: the durability barrier of the replays among them (module docstring);
    # a batch of first calls finds no row here and locks nothing.
    earlier = await conn.execute(
        _text(conn, table, "SELECT operation, key, request_hash, response FROM {}"
                           " WHERE (operation, key) IN (SELECT * FROM unnest(%b::text[], %b::text[]))"
                           " AND response IS NOT NULL FOR KEY SHARE"),
        (ops, keys))

    async def outcome() -> dict[tuple[str, str], tuple[bytes, bytes] | None]:
        found: dict[tuple[str, str], tuple[bytes, bytes] | None] = {
            (op, key): None for op, key in await claim.fetchall()}
        for op, key, digest, response in await earlier.fetchall():
            if (op, key) not in found:
                found[(op, key)] = (bytes(digest), bytes(response))
        return found

    return outcome


async def durability_barrier(conn: AsyncConnection) -> None:
    """Makes the current transaction's COMMIT wait for a synchronous standby, and come after every commit it has seen
    in the write-ahead log: for a replay that reads its stored answer without `claim` (module docstring). A
    transactional logical-decoding message: a WAL record under a transaction id, in no table, for any user."""
    await conn.execute("SELECT pg_logical_emit_message(true, 'shop.durability_barrier', '')")


def reused(operation: str) -> ServiceError:
    """ABORTED/IDEMPOTENCY_KEY_REUSED: a key already used for a different request."""
    return refuse("IDEMPOTENCY_KEY_REUSED", "this idempotency key was used for a different request",
                  {"operation": operation})


async def record_many(conn: AsyncConnection, table: sql.Composable, answers: list[tuple[str, str, bytes]],
                      refused: list[tuple[str, str]]) -> None:
    """Stores the answers of a batch's calls that took effect, and gives back the keys of those refused (a
    refused call changed nothing, so its key may be used again), in the batch's own transaction."""
    if answers:
        await conn.execute(
            _text(conn, table, "UPDATE {} t SET response = a.response"
                               " FROM unnest(%b::text[], %b::text[], %b::bytea[]) AS a(operation, key, response)"
                               " WHERE t.operation = a.operation AND t.key = a.key"),
            ([a[0] for a in answers], [a[1] for a in answers], [a[2] for a in answers]))
    if refused:
        await conn.execute(
            _text(conn, table, "DELETE FROM {} WHERE (operation, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"),
            ([r[0] for r in refused], [r[1] for r in refused]))


def _text(conn: AsyncConnection, table: sql.Composable, template: str) -> str:
    """A batch statement on `table` as plain text, rendered once: psycopg then reuses its parse of the text,
    where a composed statement is rendered again at every call."""
    key = (repr(table), template)  # composables compare by value but have no hash
    text = _TEXTS.get(key)
    if text is None:
        text = _TEXTS[key] = sql.SQL(template).format(table).as_string(conn)
    return text


_TEXTS: dict[tuple[str, str], str] = {}
