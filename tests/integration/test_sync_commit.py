"""A commit whose wait for the synchronous standby is cancelled, on a real two-member Patroni cluster: never acknowledged.

With the standby stopped (strict synchronous mode: commits wait), a write's COMMIT is cancelled with
pg_cancel_backend from another connection. Postgres then commits locally and answers success with a WARNING; the
suite's pool (shop_runtime.db.DurablePool) refuses it as UNAVAILABLE, a retry with the same key waits for the standby
(shop_runtime.idempotency's durability barrier), and once the standby is back the retry succeeds, the effect once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

import inventory_svc
from devstack import supervise
from devstack.patroni import Cluster
from devstack.procs import NotUp
from devstack.stack import Ports
from tests.integration.patroni_support import running_cluster
from shop.inventory.v1 import inventory_pb2
from shop_runtime import idempotency
from shop_runtime.db import CommitNotReplicated, migrate, open_pool
from tests.integration.inventory_support import replicas, set_stock
from tests.proctable import alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ADMIN = ("x-shop-user-id", "test-admin")


@dataclass
class OnCluster:
    ports: Ports
    cluster: Cluster
    dsn: str
    run_dir: Path

    def ctl(self, *args: str) -> str:
        return supervise.ctl(self.run_dir / "supervisor-db", *args)

    def standbys(self) -> list[str]:
        primary = self.cluster.primary()
        assert primary is not None
        return [m.name for m in self.cluster.members if m.name != primary.name]


@pytest.fixture(scope="module")
def on_cluster(tmp_path_factory):
    """Consul and a two-member Patroni cluster (a primary and its synchronous standby) under a supervisord."""
    with running_cluster(tmp_path_factory.mktemp("sync-commit"), 2, "sync-commit") as tier:
        yield OnCluster(tier.ports, tier.cluster, tier.dsn, tier.run_dir)


class StandbysDown:
    """Stops every standby's Patroni (and so its Postgres) until `start`; `start` waits until the cluster is healthy
    again. Used as a context manager it starts them again whatever happens."""

    def __init__(self, on: OnCluster) -> None:
        self.on = on
        self.names = on.standbys()
        self.down = False

    def stop(self) -> None:
        for name in self.names:
            self.on.ctl("stop", f"patroni-{name}")
        self.down = True
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the primary has no standby streaming
            with psycopg.connect(self.on.dsn, autocommit=True) as conn:
                if conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone() == (0,):
                    return
            time.sleep(0.3)
        raise TimeoutError("a standby still streams after its Patroni stopped")

    def start(self) -> float:
        started = time.monotonic()
        for name in self.names:
            self.on.ctl("start", f"patroni-{name}")
        self.down = False
        self.on.cluster.wait_healthy(180)
        return time.monotonic() - started

    def __enter__(self) -> "StandbysDown":
        self.stop()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.down:
            self.start()


async def cancel_sync_wait(dsn: str, timeout: float = 30.0) -> int:
    """Waits for a backend waiting for the synchronous standby (wait_event SyncRep), cancels its query as an
    operator would (pg_cancel_backend, from a connection of its own); returns its pid."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cur = await conn.execute("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            pids = [pid for (pid,) in await cur.fetchall()]
            if pids:
                await conn.execute("SELECT pg_cancel_backend(%s)", (pids[0],))
                return pids[0]
            await asyncio.sleep(0.05)
    raise TimeoutError("no backend waited for the synchronous standby")


async def sync_waiters(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        row = await cur.fetchone()
        assert row is not None
        return row[0]


async def insert_row(pool: AsyncConnectionPool, table: str, value: int) -> str:
    async with pool.connection() as conn:
        async with conn.transaction():
            await conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(table)), (value,))
    return "acknowledged"


async def visible(dsn: str, table: str, value: int) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE v = %s").format(sql.Identifier(table)),
                                 (value,))
        row = await cur.fetchone()
        return row == (1,)


async def test_a_cancelled_commit_is_acknowledged_by_a_plain_pool_and_refused_by_the_suites(on_cluster):
    """The edge exists (a plain pool's block returns normally, the row visible on the primary) and the suite's pool
    refuses it (CommitNotReplicated, an OperationalError); an asyncio cancellation during COMMIT, which psycopg turns
    into a server-side cancel, is not acknowledged either."""
    dsn = on_cluster.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sync_probe (v int)")
    plain = AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True})
    await plain.open(wait=True)
    durable = await open_pool(dsn, max_size=2)
    try:
        with StandbysDown(on_cluster):
            started = time.monotonic()
            write = asyncio.create_task(insert_row(plain, "sync_probe", 1))
            await cancel_sync_wait(dsn)
            answer = await asyncio.wait_for(write, 30)
            print(f"\nplain pool: COMMIT cancelled after {time.monotonic() - started:.2f}s -> {answer}; "
                  f"visible on the primary: {await visible(dsn, 'sync_probe', 1)}")
            assert answer == "acknowledged" and await visible(dsn, "sync_probe", 1)

            started = time.monotonic()
            write = asyncio.create_task(insert_row(durable, "sync_probe", 2))
            await cancel_sync_wait(dsn)
            with pytest.raises(CommitNotReplicated) as refused:
                await asyncio.wait_for(write, 30)
            assert isinstance(refused.value, psycopg.OperationalError)
            print(f"DurablePool: COMMIT cancelled after {time.monotonic() - started:.2f}s -> "
                  f"{type(refused.value).__name__}: {refused.value}; "
                  f"visible on the primary: {await visible(dsn, 'sync_probe', 2)}")
            assert await visible(dsn, "sync_probe", 2)  # committed locally: the outcome the caller cannot know

            # The connection is fine afterwards, and the next block on it is not refused for the old commit.
            async with durable.connection() as conn:
                await conn.execute("SELECT 1")

            write = asyncio.create_task(insert_row(durable, "sync_probe", 3))
            deadline = time.monotonic() + 30
            while await sync_waiters(dsn) == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            print(f"asyncio cancellation during COMMIT -> CancelledError; visible on the primary: "
                  f"{await visible(dsn, 'sync_probe', 3)}; backends still waiting: {await sync_waiters(dsn)}")
    finally:
        await plain.close()
        await durable.close()


async def test_a_cancelled_adjust_stock_is_unavailable_and_its_retry_waits_for_a_standby(on_cluster, log_dir):
    """A real inventory server on the cluster: AdjustStock +3 whose COMMIT is cancelled answers UNAVAILABLE; its
    retry with the same key is not acknowledged while the standby is down (its replay waits in SyncRep, and a cancel
    of that wait is UNAVAILABLE too); with the standby back the retry answers, and the units were added once."""
    dsn, sku, key = on_cluster.dsn, "SYNC-1", "adjust-sync-1"
    request = inventory_pb2.AdjustStockRequest(sku=sku, delta=3, reason=inventory_pb2.RESTOCK)
    metadata = [ADMIN, ("idempotency-key", key)]
    # Migrated here, so the server's start is short; started a second time if the first is not serving within
    # inventory_support's 30 s (seen once on the loaded two-core machine).
    await migrate(dsn, "inventory", Path(inventory_svc.__file__).parent / "migrations")
    async with contextlib.AsyncExitStack() as stack:
        for attempt in (1, 2):
            try:
                _, stubs = await stack.enter_async_context(replicas(on_cluster.ports, dsn, log_dir, count=1))
                break
            except NotUp:
                if attempt == 2:
                    raise
        stub = stubs[0]
        await set_stock(stub, sku, 10)
        with StandbysDown(on_cluster) as standbys:
            started = time.monotonic()
            call = asyncio.ensure_future(stub.AdjustStock(request, metadata=metadata, timeout=60))
            await cancel_sync_wait(dsn)
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await call
            on_primary = await on_hand(dsn, sku)
            print(f"\nAdjustStock +3, COMMIT cancelled: {first.value.code().name} after "
                  f"{time.monotonic() - started:.2f}s; on hand on the primary: {on_primary}")
            assert first.value.code() == grpc.StatusCode.UNAVAILABLE
            assert on_primary == 13  # committed locally, not acknowledged

            started = time.monotonic()
            retry = asyncio.ensure_future(stub.AdjustStock(request, metadata=metadata, timeout=60))
            while await sync_waiters(dsn) == 0 and not retry.done() and time.monotonic() - started < 30:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2)
            assert not retry.done()  # its replay waits for the standby: nothing acknowledged
            await cancel_sync_wait(dsn)
            waited = time.monotonic() - started
            with pytest.raises(grpc.aio.AioRpcError) as second:
                await retry
            print(f"retry with the same key while the standby is down: waited for it {waited:.2f}s, then its wait "
                  f"cancelled: {second.value.code().name}")
            assert second.value.code() == grpc.StatusCode.UNAVAILABLE

            print(f"standby back and the cluster healthy in {standbys.start():.1f}s")
        started = time.monotonic()
        answer = await stub.AdjustStock(request, metadata=metadata, timeout=60)
        print(f"retry with the standby back: OK in {time.monotonic() - started:.3f}s, on hand {answer.on_hand}")
        assert answer.on_hand == 13
        assert await on_hand(dsn, sku) == 13  # 10 + 3, once

        # What a replay's barrier costs: replays of that key against first calls, the standby in sync.
        replay, fresh = [], []
        for i in range(30):
            t = time.perf_counter()
            await stub.AdjustStock(request, metadata=metadata, timeout=30)
            replay.append(time.perf_counter() - t)
            t = time.perf_counter()
            await stub.AdjustStock(inventory_pb2.AdjustStockRequest(sku=sku, delta=1, reason=inventory_pb2.RESTOCK),
                                   metadata=[ADMIN, ("idempotency-key", f"fresh-{i}")], timeout=30)
            fresh.append(time.perf_counter() - t)
        print(f"AdjustStock over gRPC, median of 30: replay {statistics.median(replay) * 1000:.1f} ms, "
              f"first call {statistics.median(fresh) * 1000:.1f} ms")


async def on_hand(dsn: str, sku: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT on_hand FROM inventory.stock WHERE sku = %s", (sku,))
        row = await cur.fetchone()
        assert row is not None
        return row[0]


KEYS = sql.Identifier("sync_keys")


async def test_the_replay_barrier_waits_for_the_standby_and_costs_one_synchronous_commit(on_cluster):
    """idempotency.claim's replay, the standby down, does not commit until a standby has it (a plain read of the same
    stored answer, what a replay without the barrier was, commits at once); `durability_barrier` likewise. With the
    standby in sync: what the barrier costs a replay, against the same replay without it."""
    dsn = on_cluster.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sync_keys (operation text, key text, request_hash bytea,"
                     " response bytea, PRIMARY KEY (operation, key))")
        conn.execute("INSERT INTO sync_keys VALUES ('op', 'k', 'h', 'answer') ON CONFLICT DO NOTHING")
    pool = await open_pool(dsn, max_size=2)

    async def replay() -> bytes | None:
        async with pool.connection() as conn:
            async with conn.transaction():
                return await idempotency.claim(conn, KEYS, "op", "k", b"h")

    async def unguarded_replay() -> bytes | None:
        async with pool.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute("SELECT response FROM sync_keys WHERE operation = 'op' AND key = 'k'")
                row = await cur.fetchone()
                return None if row is None else bytes(row[0])

    async def barrier() -> None:
        async with pool.connection() as conn:
            async with conn.transaction():
                await idempotency.durability_barrier(conn)

    try:
        with StandbysDown(on_cluster):
            assert await asyncio.wait_for(unguarded_replay(), 10) == b"answer"
            for name, work in (("claim", replay), ("durability_barrier", barrier)):
                task = asyncio.create_task(work())
                started = time.monotonic()
                await cancel_sync_wait(dsn)
                with pytest.raises(CommitNotReplicated):
                    await asyncio.wait_for(task, 30)
                print(f"\n{name} with the standby down: waited in SyncRep, cancelled after "
                      f"{time.monotonic() - started:.2f}s -> CommitNotReplicated")
        timings: dict[str, list[float]] = {"replay with barrier": [], "replay without": [], "durability_barrier": []}
        for _ in range(50):
            for name, work in (("replay with barrier", replay), ("replay without", unguarded_replay),
                               ("durability_barrier", barrier)):
                t = time.perf_counter()
                await work()
                timings[name].append(time.perf_counter() - t)
        print(", ".join(f"{name}: median {statistics.median(v) * 1000:.2f} ms, p90 "
                        f"{sorted(v)[int(len(v) * 0.9)] * 1000:.2f} ms" for name, v in timings.items()))
    finally:
        await pool.close()


async def test_a_commit_waiting_for_the_standby_when_the_postmaster_dies_does_not_keep_the_member_down(on_cluster):
    """A backend waiting for its synchronous standby when its postmaster is killed stops waiting and reads its next
    command from its standard input (Postgres's interactive path, its client's output set to none). It must find
    end-of-file there and exit, as it does with Patroni's standard input /dev/null (devstack.patroni's
    Cluster.process): on a pipe left open (supervisord's) it blocked for ever, holding the shared memory, and the
    member's Postgres never started again ("pre-existing shared memory block is still in use")."""
    primary = on_cluster.cluster.primary()
    assert primary is not None
    with psycopg.connect(on_cluster.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS postmaster_kill (v int)")
    with StandbysDown(on_cluster):
        writer = await psycopg.AsyncConnection.connect(on_cluster.dsn, autocommit=True)
        insert = asyncio.create_task(writer.execute("INSERT INTO postmaster_kill VALUES (1)"))
        try:
            async with await psycopg.AsyncConnection.connect(on_cluster.dsn, autocommit=True) as conn:
                deadline = time.monotonic() + 30
                waiting: list[int] = []
                while not waiting and time.monotonic() < deadline:
                    cur = await conn.execute("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
                    waiting = [pid for (pid,) in await cur.fetchall()]
                    await asyncio.sleep(0.05)
            assert waiting, "no backend waited for the synchronous standby"
            postmaster = int((primary.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(postmaster, signal.SIGKILL)
            killed = time.monotonic()
            while any(alive(pid) for pid in waiting) and time.monotonic() < killed + 20:
                await asyncio.sleep(0.2)
            ended = [pid for pid in waiting if not alive(pid)]
            print(f"\nbackend(s) {waiting} waiting for the standby when the postmaster died: ended {ended}"
                  f" {time.monotonic() - killed:.1f}s after the kill")
            assert ended == waiting, "a backend of the killed postmaster lives on"
        finally:
            insert.cancel()
            with contextlib.suppress(BaseException):
                await insert
            with contextlib.suppress(Exception):
                await writer.close()
    # The standby is back (StandbysDown waited for every member healthy): the member's Postgres started again.
    state = on_cluster.cluster.primary()
    assert state is not None and on_cluster.cluster.healthy()
