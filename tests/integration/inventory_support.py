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
from devstack.procs import Proc


@contextlib.asynccontextmanager
async def replicas(ports, dsn, log_dir, count=2, **env):
    """`count` inventory processes on one database; yields (procs, stubs), one aio stub per process."""
    port_list = [free_port() for _ in range(count)]
    procs = [Proc(service_process("inventory", ports, dsn, port=p, name=f"inventory-r{i}", **env), log_dir)
             for i, p in enumerate(port_list)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in port_list]
    try:
        for proc, channel in zip(procs, channels):
            try:
                await _ready(channel, proc)
            except Exception:
                raise AssertionError(proc.log()) from None
        yield procs, [inventory_pb2_grpc.InventoryServiceStub(c) for c in channels]
    finally:
        for c in channels:
            await c.close()
        for p in procs:
            p.stop()


async def _ready(channel, proc, timeout=30.0):
    await asyncio.wait_for(channel.channel_ready(), timeout)
    assert proc.popen.poll() is None


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
