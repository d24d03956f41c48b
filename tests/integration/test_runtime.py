"""The shared runtime's promises, on real Postgres and Consul: drain on stop, health that follows the database."""

import asyncio
import socket
import time

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.stack import passing_instances, service_process
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime.config import ServiceSettings
from shop_runtime.server import build_server, serve
from devstack.procs import Proc, wait_until
from devstack.postgres import create_database, dsn_for


class SlowInventory(inventory_pb2_grpc.InventoryServiceServicer):
    """Answers availability after a delay, so a call is in flight when the server is told to stop."""

    def __init__(self):
        self.started = asyncio.Event()

    async def GetAvailability(self, request, context):
        self.started.set()
        await asyncio.sleep(1.0)
        return inventory_pb2.GetAvailabilityResponse(items=[inventory_pb2.StockLevel(sku="S-1", on_hand=1)])


async def test_stop_drains_in_flight_calls_then_refuses_new_ones(fresh_dsn, consul, tmp_path):
    host, port = consul.split(":")
    settings = ServiceSettings(
        service_name="drain-test", database_url=fresh_dsn, grpc_host="127.0.0.1", grpc_port=0,
        advertise_address="127.0.0.1", consul_host=host, consul_port=int(port),
        shutdown_grace_seconds=5.0, check_interval="1s", pool_max_size=2,
    )
    slow = SlowInventory()
    built = {}

    def create(s, deps):
        app = build_server(s, [(inventory_pb2_grpc.add_InventoryServiceServicer_to_server, slow)],
                           ["shop.inventory.v1.InventoryService"])
        built["port"] = app.port
        return app

    stop = asyncio.Event()
    server_task = asyncio.create_task(serve(settings, schema="drain_test", migrations=tmp_path, create_server=create, stop=stop))
    deadline = time.monotonic() + 20
    while "port" not in built and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{built['port']}") as channel:
        await channel.channel_ready()
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.GetAvailability(inventory_pb2.GetAvailabilityRequest(skus=["S-1"])))
        await slow.started.wait()
        stop.set()
        answer = await in_flight
        assert answer.items[0].sku == "S-1", "the call in flight at stop must complete"
        await asyncio.wait_for(server_task, 10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{built['port']}") as channel:
        try:
            await inventory_pb2_grpc.InventoryServiceStub(channel).GetAvailability(
                inventory_pb2.GetAvailabilityRequest(skus=["S-1"]), timeout=1)
            raise AssertionError("a stopped server must not answer")
        except grpc.aio.AioRpcError as err:
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _health(port):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3).status


def test_health_follows_the_database(pg_admin_dsn, consul, ports, log_dir):
    db = create_database(pg_admin_dsn)
    proc = Proc(service_process("inventory", ports, dsn_for(pg_admin_dsn, db), port=0, name="inventory-health"), log_dir)
    service_id = f"inventory-{socket.gethostname()}-{proc.pid}"

    def mine():
        return next((e for e in passing_instances(ports, "inventory") if e["Service"]["ID"] == service_id), None)

    try:
        entry = wait_until(mine, 30, what="passing")
        port = entry["Service"]["Port"]
        assert _health(port) == health_pb2.HealthCheckResponse.SERVING
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
            try:
                wait_until(lambda: _health(port) == health_pb2.HealthCheckResponse.NOT_SERVING, 20, what="NOT_SERVING")
                wait_until(lambda: mine() is None, 20, what="leaving the passing set")
            finally:
                admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        wait_until(lambda: _health(port) == health_pb2.HealthCheckResponse.SERVING, 20, what="SERVING again")
        wait_until(mine, 20, what="passing again")
    finally:
        proc.stop()


async def test_a_transaction_gone_silent_gives_its_locks_back_after_the_pools_bound(fresh_dsn):
    """A process that vanished mid-transaction (its host cut off) holds its locks until Postgres ends the
    transaction: with the pool's bound, after that many seconds; without it, the lock stays taken."""
    from inventory_svc.server import SPEC
    from shop_runtime.db import open_pool

    assert SPEC.idle_in_transaction_seconds == 5.0  # what inventory's pools run with

    async def lock_then_fall_silent(pool) -> psycopg.AsyncConnection:
        conn = await pool.getconn()
        await conn.execute("BEGIN")
        await conn.execute("SELECT pg_advisory_xact_lock(4242)")
        return conn  # no further statement: as a client whose host lost its cable

    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as other:
        async def free() -> bool:
            return (await (await other.execute("SELECT pg_try_advisory_lock(4242)")).fetchone())[0]

        bounded = await open_pool(fresh_dsn, max_size=2, idle_in_transaction_seconds=1)
        unbounded = await open_pool(fresh_dsn, max_size=2)
        try:
            silent = await lock_then_fall_silent(unbounded)
            await asyncio.sleep(2)
            assert not await free()
            await silent.execute("ROLLBACK")
            await unbounded.putconn(silent)

            silent = await lock_then_fall_silent(bounded)
            assert not await free()
            await asyncio.sleep(2)
            assert await free()
            await other.execute("SELECT pg_advisory_unlock(4242)")
            with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):  # its transaction is gone
                await silent.execute("SELECT 1")
            await bounded.putconn(silent)
        finally:
            await bounded.close()
            await unbounded.close()


async def test_a_database_that_fails_under_a_call_is_a_503_not_a_500(fresh_dsn):
    """A connection the database broke under a call (a server restarting, a peer given up) answers UNAVAILABLE
    with DEPENDENCY_UNAVAILABLE (503 at the gateway), which callers retry with their key; not UNKNOWN (500)."""
    from shop_runtime.errors import error_info

    class BrokenDatabase(inventory_pb2_grpc.InventoryServiceServicer):
        async def GetAvailability(self, request, context):
            async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
                pid = conn.info.backend_pid
                async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as admin:
                    await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                await conn.execute("SELECT 1")
            raise AssertionError("the query on a terminated connection went through")

    settings = ServiceSettings(
        service_name="broken-db", database_url=fresh_dsn, grpc_host="127.0.0.1", grpc_port=0,
        advertise_address="127.0.0.1", consul_host="127.0.0.1", consul_port=8500,
        shutdown_grace_seconds=1.0, check_interval="1s", pool_max_size=2,
    )
    app = build_server(settings, [(inventory_pb2_grpc.add_InventoryServiceServicer_to_server, BrokenDatabase())],
                       ["shop.inventory.v1.InventoryService"])
    await app.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await inventory_pb2_grpc.InventoryServiceStub(channel).GetAvailability(
                    inventory_pb2.GetAvailabilityRequest(skus=["S-1"]), timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(failed.value)
        assert (info.reason, dict(info.metadata)) == ("DEPENDENCY_UNAVAILABLE", {"service": "database"})
    finally:
        await app.server.stop(0)
