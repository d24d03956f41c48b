"""Prometheus metrics of a service process: RPCs by method and code with their time, inventory's stock calls by
outcome, transactions, expiries, and the pool, scraped from the real process's /metrics."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.procs import wait_until
from devstack.stack import free_port, http_get
from shop.inventory.v1 import inventory_pb2
from tests.integration.inventory_support import hold, replicas, set_stock


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of every sample the process serves."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_service_counts_its_calls_holds_and_pool(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=1, METRICS_PORT=lambda: str(free_port()),
                        INVENTORY_SWEEP_INTERVAL_SECONDS="0.2") as ((proc,), (stub,)):
        metrics_port = int(proc.env["METRICS_PORT"])
        await set_stock(stub, "M-1", 3)
        for owner in ("cart:a", "cart:b", "cart:c"):
            await hold(stub, owner, {"M-1": 1}, ttl=600 if owner != "cart:c" else 1)
        with pytest.raises(grpc.aio.AioRpcError):
            await hold(stub, "cart:d", {"M-1": 1})  # sold out
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=["not-a-hold-id"]))
        # cart:c's hold expires (1 s) and the sweeper (every 0.2 s) reclaims it: as soon as the machine lets it.
        samples = await asyncio.to_thread(
            wait_until, lambda: (s := scrape(metrics_port)) and value(s, "shop_inventory_holds_expired_total") and s,
            30, 0.2, "the sweeper to reclaim the expired hold")
    method = "/shop.inventory.v1.InventoryService/CreateHolds"
    assert value(samples, "shop_rpc_calls_total", service="inventory", method=method, code="OK") == 3
    assert value(samples, "shop_rpc_calls_total", service="inventory", method=method, code="ABORTED") == 1
    assert value(samples, "shop_rpc_calls_total", service="inventory", code="INVALID_ARGUMENT",
                 method="/shop.inventory.v1.InventoryService/ReleaseHolds") == 1
    assert value(samples, "shop_rpc_seconds_count", service="inventory", method=method) == 4
    assert value(samples, "shop_inventory_calls_total", operation="create_holds", outcome="OK") == 3
    assert value(samples, "shop_inventory_calls_total", operation="create_holds", outcome="OUT_OF_STOCK") == 1
    assert value(samples, "shop_inventory_holds_expired_total") == 1
    assert value(samples, "shop_inventory_transaction_calls_count") == 4
    assert value(samples, "shop_db_pool_connections", state="size") >= 1
