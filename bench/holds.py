"""Hold throughput on one hot SKU, beside two reference figures measured in the same run.

1. service: concurrent CreateHolds calls of 1 unit on one SKU to a real inventory_svc process
   (idempotency key, advisory lock, expiry reclaim, hold row, stock update and ledger entry each);
2. ceiling: the same concurrency of no-op gRPC calls (Health.Check) to the same process, the most
   a Python gRPC service answers here;
3. plain SQL: one transaction per hold under the SKU's advisory lock, straight to Postgres from
   as many connections (lock, read the figures, insert a hold row, update the stock row).

Run: `python -m bench.holds --concurrency 64 --requests 4000`: a quick look at inventory alone, one process.
`make bench` measures these figures and the REST ones on a whole suite (bench/flash_sale.py).
Compare the ratios within one run: the machine is shared and absolute figures drift between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.postgres import create_database, dsn_for, start_embedded
from devstack.procs import Proc, consul_ready, wait_until
from devstack.stack import Ports, consul_process, free_port, service_process
from inventory_svc.audit import audit
from inventory_svc.repository import sku_lock_key
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

HOT = "BENCH-HOT"


async def measure(concurrency: int, requests: int, call: Callable[[int], Awaitable[None]],
                  seconds: float | None = None) -> tuple[float, list[float]]:
    """Runs `requests` calls (or as many as `seconds` allow) with `concurrency` in flight; returns (calls per
    second, latencies in ms)."""
    latencies: list[float] = []
    remaining = iter(range(requests))
    deadline = time.monotonic() + seconds if seconds else None

    async def worker() -> None:
        for i in remaining:
            if deadline and time.monotonic() >= deadline:
                break
            start = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - start), latencies


def pct(values: list[float], p: float) -> float:
    """The p-th percentile of values."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def create_tables(dsn: str, on_hand: int) -> None:
    """The plain-SQL reference's own stock and holds tables (schema `bench`), HOT with `on_hand` units, none held."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        await conn.execute("CREATE TABLE IF NOT EXISTS bench.stock (sku text PRIMARY KEY, on_hand int NOT NULL,"
                           " reserved int NOT NULL, CHECK (reserved BETWEEN 0 AND on_hand))")
        await conn.execute("CREATE TABLE IF NOT EXISTS bench.holds (id uuid PRIMARY KEY, sku text NOT NULL,"
                           " qty int NOT NULL, expires_at timestamptz NOT NULL)")
        await conn.execute("INSERT INTO bench.stock VALUES (%s, %s, 0)"
                           " ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand, reserved = 0",
                           (HOT, on_hand))


async def plain_sql(dsn: str, concurrency: int, requests: int,
                    seconds: float | None = None) -> tuple[float, list[float]]:
    """The reference: one transaction per hold under the SKU's advisory lock, from `concurrency` connections,
    `requests` holds or as many as `seconds` allow."""
    await create_tables(dsn, 10 * requests)
    conns = [await psycopg.AsyncConnection.connect(dsn) for _ in range(concurrency)]
    free: asyncio.Queue[psycopg.AsyncConnection] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    key = sku_lock_key(HOT)

    async def one(_: int) -> None:
        conn = await free.get()
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                cur = await conn.execute("SELECT on_hand - reserved FROM bench.stock WHERE sku = %s", (HOT,))
                row = await cur.fetchone()
                assert row is not None  # the bench's own SKU, made by create_tables
                if row[0] >= 1:
                    await conn.execute("INSERT INTO bench.holds VALUES (%s, %s, 1, now() + interval '10 min')",
                                       (uuid.uuid4(), HOT))
                    await conn.execute("UPDATE bench.stock SET reserved = reserved + 1 WHERE sku = %s", (HOT,))
        finally:
            free.put_nowait(conn)

    try:
        return await measure(concurrency, requests, one, seconds)
    finally:
        for c in conns:
            await c.close()


async def run(args: argparse.Namespace, dsn: str, port: int) -> list[tuple[str, float, list[float]]]:
    results = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        await stub.SetStock(inventory_pb2.SetStockRequest(sku=HOT, on_hand=1_000_000))

        async def hold(i: int) -> None:
            await stub.CreateHolds(inventory_pb2.CreateHoldsRequest(
                owner=f"cart:bench-{i}", lines=[inventory_pb2.HoldLine(sku=HOT, qty=1)], ttl_seconds=3600,
                idempotency_key=uuid.uuid4().hex))

        async def noop(_: int) -> None:
            # types-grpcio-health-checking's HealthStub leaves out the stub's per-RPC attributes.
            await health.Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]

        await measure(args.concurrency, min(200, args.requests), hold)  # warm-up: pools, channels, caches
        results.append(("service: gRPC CreateHolds, 1 hot SKU", *await measure(args.concurrency, args.requests, hold)))
        results.append(("ceiling: no-op gRPC call (Health.Check)", *await measure(args.concurrency, args.requests, noop)))
    results.append(("plain SQL: 1 tx per hold under the lock", *await plain_sql(dsn, args.concurrency, args.requests)))
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        violations = await audit(conn)
    print(f"audit after the run: {len(violations)} violation(s)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.holds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight at once")
    parser.add_argument("--requests", type=int, default=4000, help="calls per measurement")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    server = start_embedded(work / "pg")
    admin = server.get_uri()
    dsn = dsn_for(admin, create_database(admin, "bench"))
    ports = Ports.free()
    consul = Proc(consul_process(ports), work)
    inventory_port = free_port()
    inventory = Proc(service_process("inventory", ports, dsn, port=inventory_port, DB_POOL_MAX_SIZE="20",
                                     LOG_LEVEL="WARNING"), work)
    try:
        wait_until(lambda: consul_ready(ports.consul_addr), 30, what="consul")
        results = asyncio.run(run(args, dsn, inventory_port))
    finally:
        inventory.stop()
        consul.stop()
        server.cleanup()
    print(f"\nconcurrency {args.concurrency}, {args.requests} calls each, one machine ({sys.platform}),"
          " client and server sharing its cores\n")
    print(f"{'':44} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, rate, lat in results:
        print(f"{name:44} {rate:9.0f} {pct(lat, 50):8.2f} {pct(lat, 99):8.2f}")
    service, ceiling, plain = (r[1] for r in results)
    print(f"\nservice / ceiling = {service / ceiling:.2f}   service / plain SQL = {service / plain:.2f}")
    print(f"reproduce: python -m bench.holds --concurrency {args.concurrency} --requests {args.requests}")


if __name__ == "__main__":
    main()
