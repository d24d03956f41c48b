"""Discovery through a real Consul: only passing instances, kept current, last known good without Consul."""

import asyncio
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devstack.stack import free_port
from shop_runtime import consul as shop_consul
from shop_runtime.clients import ServiceClient
from shop_runtime.consul import Discovery, Instance
from shop_runtime.errors import ServiceError
from devstack.procs import start_consul


class HealthServer:
    """A real gRPC server whose health status the test sets."""

    async def start(self):
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        await self.set(True)
        return self

    async def set(self, serving: bool):
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING if serving
                              else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self):
        await self.server.stop(0)


async def eventually(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def client(consul):
    host, port = consul.split(":")
    c = shop_consul.connect(host, int(port))
    yield c
    await c.close()


async def _register(client, name, sid, port):
    await shop_consul.register(client, name=name, service_id=sid, address="127.0.0.1", port=port, check_interval="1s")


async def test_only_passing_instances_are_listed_and_the_list_follows_health(client):
    name = f"disco-{uuid.uuid4().hex[:8]}"
    live = await HealthServer().start()
    discovery = Discovery(client, name)
    try:
        await _register(client, name, f"{name}-live", live.port)
        await _register(client, name, f"{name}-dead", free_port())  # nothing listens there: its check fails
        discovery.start()
        expected = [Instance("127.0.0.1", live.port, f"{name}-live")]
        await eventually(lambda: discovery.instances() == expected, what="the live instance only")
        _, all_nodes = await client.health.service(name)
        assert len(all_nodes) == 2, "the failing instance is registered, just not passing"

        await live.set(False)
        await eventually(lambda: discovery.instances() == [], what="NOT_SERVING instance dropped")
        await live.set(True)
        await eventually(lambda: discovery.instances() == expected, what="instance back")
    finally:
        await discovery.stop()
        for sid in (f"{name}-live", f"{name}-dead"):
            await shop_consul.deregister(client, sid)
        await live.stop()


async def test_client_spreads_calls_and_refuses_without_instances(client):
    name = f"spread-{uuid.uuid4().hex[:8]}"
    servers = [await HealthServer().start() for _ in range(2)]
    discovery = Discovery(client, name)
    service_client = ServiceClient(discovery, health_pb2_grpc.HealthStub)
    try:
        with pytest.raises(ServiceError) as caught:
            service_client.stub()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        for i, s in enumerate(servers):
            await _register(client, name, f"{name}-{i}", s.port)
        discovery.start()
        await eventually(lambda: len(discovery.instances()) == 2, what="two instances")
        stubs = {id(service_client.stub()) for _ in range(6)}
        assert len(stubs) == 2
        for _ in range(4):
            answer = await service_client.stub().Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await discovery.stop()
        await service_client.close()
        for i in range(2):
            await shop_consul.deregister(client, f"{name}-{i}")
        for s in servers:
            await s.stop()


async def test_a_call_made_as_discovery_starts_waits_for_consuls_first_answer(client):
    # A process that has just started (a replica started again) serves before Consul has answered where the
    # services it calls are; its first calls wait for that answer instead of failing as "unavailable".
    name = f"first-{uuid.uuid4().hex[:8]}"
    server = await HealthServer().start()
    discovery = Discovery(client, name)
    service_client = ServiceClient(discovery, health_pb2_grpc.HealthStub)
    try:
        await _register(client, name, f"{name}-0", server.port)
        deadline = time.monotonic() + 15
        while not (await client.health.service(name, passing=True))[1]:
            assert time.monotonic() < deadline, "the instance never passed its check"
            await asyncio.sleep(0.1)
        discovery.start()
        assert not discovery.ready
        answer = await service_client.call("Check", health_pb2.HealthCheckRequest(), idempotent=True)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await discovery.stop()
        await service_client.close()
        await shop_consul.deregister(client, f"{name}-0")
        await server.stop()


async def test_last_known_good_survives_consul_going_away(log_dir):
    ports, agent = await asyncio.to_thread(start_consul, log_dir)
    live = await HealthServer().start()
    c = shop_consul.connect("127.0.0.1", ports.consul_http)
    discovery = Discovery(c, "lkg")
    try:
        await _register(c, "lkg", "lkg-1", live.port)
        discovery.start()
        expected = [Instance("127.0.0.1", live.port, "lkg-1")]
        await eventually(lambda: discovery.instances() == expected, what="instance listed")
        agent.popen.kill()
        agent.popen.wait()
        await asyncio.sleep(3)  # several failed watch attempts
        assert discovery.instances() == expected
    finally:
        await discovery.stop()
        await c.close()
        await live.stop()
        agent.stop()


async def test_every_instance_failing_for_a_moment_is_not_believed_but_for_longer_it_is(client):
    """Consul can say for a moment that every instance of a service fails (a partitioned host rejoining makes it
    mark the others' nodes failed): the list stays until Consul has said so for ALL_FAILING_CONFIRM_SECONDS."""
    name = f"flap-{uuid.uuid4().hex[:8]}"
    servers = [await HealthServer().start() for _ in range(2)]
    discovery = Discovery(client, name)
    seen: list[int] = []
    consul_said_none = False

    async def watch_both():
        nonlocal consul_said_none
        while True:
            seen.append(len(discovery.instances()))
            _, passing = await client.health.service(name, passing=True)
            consul_said_none |= not passing
            await asyncio.sleep(0.05)

    try:
        for i, s in enumerate(servers):
            await _register(client, name, f"{name}-{i}", s.port)
        discovery.start()
        await eventually(lambda: len(discovery.instances()) == 2, what="two instances")
        watcher = asyncio.create_task(watch_both())
        # Every instance fails for about one check interval (1 s), then serves again.
        for s in servers:
            await s.set(False)
        await eventually(lambda: consul_said_none, what="Consul saying no instance passes")
        for s in servers:
            await s.set(True)
        await eventually(lambda: len(discovery.instances()) == 2 and seen[-1] == 2, what="both back")
        await asyncio.sleep(1.5)
        assert 0 not in seen, "a moment with no instance passing emptied the list"
        # For longer than the confirmation: believed.
        for s in servers:
            await s.set(False)
        started = time.monotonic()
        await eventually(lambda: discovery.instances() == [], what="the list emptied")
        assert time.monotonic() - started >= shop_consul.ALL_FAILING_CONFIRM_SECONDS
        watcher.cancel()
    finally:
        await discovery.stop()
        for i in range(2):
            await shop_consul.deregister(client, f"{name}-{i}")
        for s in servers:
            await s.stop()
