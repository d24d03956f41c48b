"""The catalog over gRPC with two inventory replicas: calls spread, survive one replica stopping, and fail cleanly with none."""

import asyncio
import signal

import grpc
import pytest

from devstack.prepare import prepare
from devstack.stack import passing_instances, service_process
from shop.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop_runtime.errors import error_info
from devstack.procs import Proc, start_consul, wait_until, wait_up


@pytest.fixture
def private_suite(fresh_dsn, log_dir):
    """Consul, a catalog and two inventory replicas of their own, so replicas can be stopped freely."""
    asyncio.run(prepare(fresh_dsn))
    ports, consul = start_consul(log_dir)
    procs = []
    try:
        procs = [Proc(service_process("catalog", ports, fresh_dsn, port=0), log_dir)] + [
            Proc(service_process("inventory", ports, fresh_dsn, port=0, name=f"inventory-{i}"), log_dir)
            for i in range(2)
        ]
        wait_up(procs, lambda: len(passing_instances(ports, "inventory")) == 2 and passing_instances(ports, "catalog"),
                30, "catalog and two inventory replicas")
        yield ports, procs
    finally:
        for p in procs:
            p.stop()
        consul.stop()


def test_catalog_keeps_answering_while_an_inventory_replica_stops(private_suite):
    ports, (catalog, inv_a, inv_b) = private_suite
    port = passing_instances(ports, "catalog")[0]["Service"]["Port"]
    request = catalog_pb2.ListProductsRequest(limit=20, category="toys")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        baseline = stub.ListProducts(request, timeout=5)
        assert len(baseline.items) == 20

        inv_a.signal(signal.SIGTERM)
        for _ in range(60):
            assert stub.ListProducts(request, timeout=5) == baseline
        assert inv_a.popen.wait(20) == 0

        inv_b.signal(signal.SIGTERM)
        assert inv_b.popen.wait(20) == 0

        def unavailable():
            try:
                stub.ListProducts(request, timeout=5)
                return None
            except grpc.RpcError as err:
                return err

        err = wait_until(unavailable, 20, what="catalog refusing without inventory")
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(err).reason == "DEPENDENCY_UNAVAILABLE"
