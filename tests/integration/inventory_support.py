"""Running inventory replicas as real processes for a test, and reading what they did."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import psycopg

from devstack.stack import free_port, service_process
from inventory_svc.audit import audit
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime.errors import error_info
from devstack.procs import PORT_ATTEMPTS, NotUp, Proc


@contextlib.asynccontextmanager
async def replicas(ports, dsn, log_dir, count=2, **env):
    """`count` inventory processes on one database, each on a port picked free (and picked again when it was taken
    before the process bound it); yields (procs, stubs), one aio stub per process. A callable value of `env` is
    called for each start (`METRICS_PORT=lambda: str(free_port())`); a process's own is in its `env`."""
    procs, channels = [], []
    try:
        for i in range(count):
            proc, channel = await _start(ports, dsn, log_dir, f"inventory-r{i}", env)
            procs.append(proc)
            channels.append(channel)
        yield procs, [inventory_pb2_grpc.InventoryServiceStub(c) for c in channels]
    finally:
        for c in channels:
            await c.close()
        for p in procs:
            p.stop()


async def _start(ports, dsn, log_dir, name, env, timeout=30.0):
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        values = {k: v() if callable(v) else v for k, v in env.items()}
        proc = Proc(service_process("inventory", ports, dsn, port=port, name=name, **values), log_dir)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            await _ready(channel, proc, timeout)
            return proc, channel
        except (asyncio.TimeoutError, NotUp) as err:
            await channel.close()
            proc.stop()
            failure = err if isinstance(err, NotUp) else NotUp(name, [proc], f"not serving after {timeout}s")
            if not failure.port_taken or attempt == PORT_ATTEMPTS:
                raise failure from None


async def _ready(channel, proc, timeout):
    """Until the process serves on the channel's port; NotUp if it exits first."""
    async with asyncio.timeout(timeout):
        while True:
            if proc.popen.poll() is not None:
                raise NotUp(proc.name, [proc], "it exited")
            try:
                await asyncio.wait_for(channel.channel_ready(), 0.5)
                return
            except asyncio.TimeoutError:
                continue


def reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call."""
    info = error_info(err)
    return info.reason if info else ""


async def set_stock(stub, sku: str, on_hand: int) -> inventory_pb2.StockLevel:
    """Sets a SKU's stock as an admin would."""
    return await stub.SetStock(inventory_pb2.SetStockRequest(sku=sku, on_hand=on_hand),
                               metadata=[("x-shop-user-id", "test-admin")], timeout=10)


async def hold(stub, owner: str, lines: dict[str, int], ttl: int = 600, key: str = ""):
    """Holds the lines for owner; returns the holds."""
    request = inventory_pb2.CreateHoldsRequest(
        owner=owner, lines=[inventory_pb2.HoldLine(sku=s, qty=q) for s, q in lines.items()],
        ttl_seconds=ttl, idempotency_key=key)
    return (await stub.CreateHolds(request, timeout=30)).holds


async def availability(stub, *skus: str) -> dict[str, inventory_pb2.StockLevel]:
    """The figures of the SKUs as the service reports them."""
    answer = await stub.GetAvailability(inventory_pb2.GetAvailabilityRequest(skus=list(skus)), timeout=10)
    return {i.sku: i for i in answer.items}


async def audit_of(dsn: str) -> list[str]:
    """The audit's violations for the database."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await audit(conn)


def stored(dsn: str, query: str, *params):
    """Rows straight from the database."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()
