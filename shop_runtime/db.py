"""The Postgres connection pool and each service's schema migrations."""

from __future__ import annotations

import hashlib
import logging
import weakref
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from shop_runtime import deadlines

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
# with its key: until the end of the call's own budget (shop_runtime.deadlines), which ends before the gateway's
# timeout of its route (the budget plus a margin), so a call that waits out a primary's absence is answered 503 rather
# than cut off with a 504 while its work goes on, and a crowd that queues for a busy pool waits as long as its calls
# may take (a fixed wait shorter than that refused readers of a crowd the pool was serving). At least
# MIN_POOL_WAIT_SECONDS; work outside a call (sweepers, reconcilers) waits POOL_WAIT_SECONDS.
POOL_WAIT_SECONDS = 30.0
MIN_POOL_WAIT_SECONDS = 1.0


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
    pool = DurablePool(dsn, min_size=1, max_size=max_size, open=False, name="shop", kwargs=kwargs,
                       timeout=POOL_WAIT_SECONDS, reconnect_timeout=RECONNECT_SECONDS)
    try:
        await pool.open(wait=True, timeout=timeout)
    except Exception:
        await pool.close()
        raise
    return pool


# A commit whose wait for the synchronous standby is cancelled (Patroni's documented edge).
#
# Under synchronous replication COMMIT writes its commit record locally, then waits until a synchronous standby has
# flushed it. A cancel of that wait (a query cancel, not a termination) ends the wait with the WARNING below and
# COMMIT then returns success: the commit is visible on this primary and lost if the primary dies before a standby
# has it. A termination instead (a fast shutdown on demotion, pg_terminate_backend, a lost connection) reaches the
# client as a dropped connection: psycopg.OperationalError, an unknown outcome the interceptor already answers
# UNAVAILABLE and callers retry with the same idempotency key.
#
# How the services themselves could cancel a commit's wait (what the suite does, as of this writing):
# - psycopg, on an asyncio cancellation of a task awaiting a statement (COMMIT among them), sends the server a
#   cancel request (AsyncConnection.wait on CancelledError) and raises CancelledError: exactly this edge. Such a
#   cancellation comes from:
#   - a gRPC caller giving up (its deadline, a client cancel) or grpc's server.stop(grace) ending its calls: NOT
#     passed on, shop_runtime.interceptor.CallInterceptor runs the handler's work in a task of its own behind
#     asyncio.shield and lets it finish detached;
#   - the process stopping: the background tasks (sweepers, reconcilers, readiness) are cancelled by
#     shop_runtime.server.run, and detached handlers still waiting after drain() are cancelled when the event loop
#     ends. Their COMMIT is then cancelled: the CancelledError propagates, so nothing acknowledges it, and a retry
#     of its step passes the durability barrier below;
#   - asyncio.wait_for / asyncio.timeout / task.cancel() in service code: they wrap calls to other services and to
#     the payment provider (order_svc.service), Consul watches and cache loads, not a database statement.
# - statement_timeout: none is set (neither open_pool's options nor the migrations nor the Postgres settings); the
#   only session timeout open_pool sets, idle_in_transaction_session_timeout, terminates (FATAL, a dropped
#   connection) and does not run during a COMMIT.
# - Outside the services: an operator's pg_cancel_backend (or a tool doing it); Postgres itself when a backend
#   waiting for the standby gets a cancel interrupt. Patroni does not cancel: on demotion it shuts Postgres down
#   fast, which terminates.
# Whatever the source, DurablePool below notices the WARNING on every pool connection, so none is acknowledged.

# The WARNING's text (SQLSTATE 01000, a plain warning: no code of its own, so the text is what tells it apart). It
# assumes untranslated server messages: the clusters devstack.patroni makes run with lc_messages C.UTF-8; a server
# set to another language would need this matched in that language (or lc_messages=C in the connection options).
SYNC_REP_CANCELLED = "canceling wait for synchronous replication"


class CommitNotReplicated(psycopg.OperationalError):
    """A commit of this connection is visible on the primary but no synchronous standby has confirmed it: its
    outcome is unknown to the caller, as after a dropped connection (UNAVAILABLE; retry with the same key)."""


class _CommitWatch:
    """A connection's notice handler: remembers the last notice that a commit's wait for the standby was cancelled."""

    def __init__(self) -> None:
        self.cancelled: str | None = None

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        if (diag.message_primary or "").startswith(SYNC_REP_CANCELLED):
            self.cancelled = f"{diag.message_primary} ({diag.message_detail or ''})"
            _LOGGER.warning("a commit's wait for the synchronous standby was cancelled: %s", self.cancelled)


class DurablePool(AsyncConnectionPool):
    """The services' pool: a `connection()` block in which a commit's wait for the synchronous standby was cancelled
    does not end normally, it raises CommitNotReplicated (a psycopg.OperationalError, so UNAVAILABLE).

    The decision, where Patroni's documentation leaves the edge to the application: a commit only local is never
    acknowledged. The block raises at once rather than wait for a standby to confirm the commit's LSN, because
    - the caller's retry with the same idempotency key already waits for exactly that, through Postgres's own wait:
      a replay of a stored answer passes a durability barrier (shop_runtime.idempotency) whose commit comes after
      the earlier one in the write-ahead log and is acknowledged only once a synchronous standby has both; a second,
      hand-written wait (polling pg_stat_replication) would be one more timeout to choose and keep right;
    - a cancelled wait mostly means no standby was confirming (nothing else waits long enough to be cancelled):
      waiting again would hold a pool connection and the call's budget for a standby that is not there, while the
      caller can be told at once that the outcome is unknown and retried (or fail over to a new primary, where the
      retry either finds the commit replicated or does the step afresh);
    - it is the answer the suite already gives a dropped connection, the other way a commit's outcome becomes
      unknown: one rule for callers, and a retry never double-counts (the key).
    The check runs when the block ends: code inside the block after its transaction must not act on the commit
    outside the database (the services call other services outside their pool blocks).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._user_configure = kwargs.pop("configure", None)
        super().__init__(*args, configure=self._configure_connection, **kwargs)
        self._watches: weakref.WeakKeyDictionary[psycopg.AsyncConnection, _CommitWatch] = weakref.WeakKeyDictionary()

    async def _configure_connection(self, conn: psycopg.AsyncConnection) -> None:
        watch = _CommitWatch()
        conn.add_notice_handler(watch)
        self._watches[conn] = watch
        if self._user_configure is not None:
            await self._user_configure(conn)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[psycopg.AsyncConnection]:
        if timeout is None and (left := deadlines.remaining()) is not None:
            timeout = max(left, MIN_POOL_WAIT_SECONDS)
        async with super().connection(timeout) as conn:
            watch = self._watches.get(conn)
            if watch is not None:
                watch.cancelled = None
            yield conn
            if watch is not None and watch.cancelled:
                cancelled, watch.cancelled = watch.cancelled, None
                raise CommitNotReplicated(f"commit not confirmed by a synchronous standby: {cancelled}")


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
