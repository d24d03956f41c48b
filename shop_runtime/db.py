"""The Postgres connection pool and each service's schema migrations."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

_LOGGER = logging.getLogger(__name__)

# First key of the two-int advisory lock that serialises migrations of one schema;
# the second is the schema's hash. Other lock users pick other namespaces.
MIGRATION_LOCK_NAMESPACE = 1


# How the services' database connections notice a peer gone without a word, on both ends (libpq's and the
# server's settings of the same names): keepalive probes after 3 s of silence, one a second, the peer given up after
# 3 unanswered; and a connection whose sent bytes stay unacknowledged for DEAD_PEER_SECONDS is closed
# (tcp_user_timeout: while bytes wait to be acknowledged, TCP sends no keepalives, and retransmits for ~15 min).
KEEPALIVE = {"idle": 3, "interval": 1, "count": 3}
DEAD_PEER_SECONDS = KEEPALIVE["idle"] + KEEPALIVE["interval"] * KEEPALIVE["count"]
TCP_USER_TIMEOUT_MS = DEAD_PEER_SECONDS * 1000

# How the pool follows a failover of the Postgres primary (a Patroni cluster: the DSN names every member with
# target_session_attrs=read-write, so a new connection reaches whichever member is the primary now).
# - A connection the failover broke is found on use: its call fails OperationalError (UNAVAILABLE, retried by the
#   caller with its key) and the pool drops it; the readiness probe (shop_runtime.registration) also runs pool.check()
#   when the database answers again, before the service says it serves. A check on every checkout (the pool's `check`
#   callback) was measured on loopback at +0.5 to +0.7 ms on a checkout and SELECT 1 of ~0.5 ms, one more round trip
#   on every call for what a failover costs a few calls once: not used.
# - Connections to a demoted primary do not linger: Patroni restarts a demoted Postgres, which ends its sessions; so
#   max_lifetime stays the pool's default.
# - The pool replaces a broken connection with attempts 1, 2, 4, 8, ... s apart until reconnect_timeout; after
#   a primary down ~10 s, its next attempt came ~15 s after the failover, and calls waited for a connection long after
#   a primary took writes again. Ending each series of attempts after RECONNECT_SECONDS keeps the gaps at most
#   ~2 s: a caller waiting for a connection starts a new series at once (the pool grows on demand).
RECONNECT_SECONDS = 4.0
# How long a call waits for a connection before it fails UNAVAILABLE (PoolTimeout is an OperationalError), retryable
# with its key; shorter than the gateway's timeout of a route (a budget of 10 s or more, plus 5 s), so a call that
# waits out a primary's absence is answered 503 rather than cut off with a 504 while its work goes on.
POOL_WAIT_SECONDS = 8.0


async def open_pool(dsn: str, *, max_size: int = 10, timeout: float = 10.0,
                    idle_in_transaction_seconds: float = 0) -> AsyncConnectionPool:
    """Opens a pool and waits for its first connection, so a bad DSN fails at start, not at first call.

    Its connections are in autocommit: a read outside `conn.transaction()` is one round trip, with no COMMIT
    after it; every write of the services runs inside an explicit `conn.transaction()`, as before.

    A peer that is gone without a word (a host cut off from the network) is noticed by TCP keepalives on both
    ends within DEAD_PEER_SECONDS: Postgres ends the sessions of a service whose host vanished, and with them
    their transactions and locks (a SKU's lock held by such a session would stop every replica's sale of that
    SKU until the host came back, or for the two hours after which TCP gives up by default); the service drops
    connections to a database it no longer reaches.

    With `idle_in_transaction_seconds`, Postgres also ends a transaction of the pool that waits that long for its
    next statement, and with it the locks it holds, whatever the network does.
    """
    settings = {**{f"tcp_keepalives_{k}": v for k, v in KEEPALIVE.items()}, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
    if idle_in_transaction_seconds:
        settings["idle_in_transaction_session_timeout"] = int(idle_in_transaction_seconds * 1000)
    kwargs: dict = {"autocommit": True, "keepalives": 1, **{f"keepalives_{k}": v for k, v in KEEPALIVE.items()},
                    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
                    "options": " ".join(f"-c {k}={v}" for k, v in settings.items())}
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=max_size, open=False, name="shop", kwargs=kwargs,
                               timeout=POOL_WAIT_SECONDS, reconnect_timeout=RECONNECT_SECONDS)
    try:
        await pool.open(wait=True, timeout=timeout)
    except Exception:
        await pool.close()
        raise
    return pool


class MigrationError(RuntimeError):
    """An applied migration's file has changed since it was applied."""


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def migrate(dsn: str, schema: str, directory: Path) -> list[str]:
    """Applies the `NNNN_name.sql` files of `directory` not yet recorded in `<schema>.schema_migrations`.

    Hand-written rather than yoyo or alembic because what is needed is small and specific:
    all pending files in one transaction under a transaction-scoped advisory lock, so several
    replicas starting at once apply each file exactly once and a failure leaves nothing behind,
    with the bookkeeping inside the service's own schema. Returns the versions it applied.
    """
    files = sorted(directory.glob("*.sql")) if directory.is_dir() else []
    schema_id = sql.Identifier(schema)
    applied_now: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (MIGRATION_LOCK_NAMESPACE, schema)
            )
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema_id))
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    " version text PRIMARY KEY, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(schema_id)
            )
            cur = await conn.execute(
                sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(schema_id)
            )
            applied: dict[str, str] = dict(await cur.fetchall())
            for path in files:
                text = path.read_text()
                version = path.stem
                if version in applied:
                    if applied[version] != _checksum(text):
                        raise MigrationError(f"{schema} migration {path.name} changed after it was applied")
                    continue
                await conn.execute(text)
                await conn.execute(
                    sql.SQL("INSERT INTO {}.schema_migrations (version, checksum) VALUES (%s, %s)").format(schema_id),
                    (version, _checksum(text)),
                )
                applied_now.append(version)
    if applied_now:
        _LOGGER.info("schema %s: applied migrations %s", schema, ", ".join(applied_now))
    return applied_now
