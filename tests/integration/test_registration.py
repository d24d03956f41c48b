"""Registrations that survive: a service registers again by itself when Consul has lost it (an agent restart, a
registration reaped), its readiness does not hang on its pool, and clients keep their last known instances while
Consul has none registered. Real service processes, real Consul agents, real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.request

import psycopg
import pytest

from devstack.postgres import dsn_for
from devstack.prepare import prepare
from devstack.procs import Proc, start_consul, wait_until, wait_up
from devstack.stack import ProcessSpec, consul_process, http_get, passing_instances, service_process
from shop_runtime import consul as shop_consul
from shop_runtime.consul import Discovery, Instance
from shop_runtime.db import open_pool
from shop_runtime.registration import Readiness


@pytest.fixture
def private(fresh_dsn, log_dir):
    """A Consul agent and one inventory process of their own (the agent is restarted by the tests)."""
    asyncio.run(prepare(fresh_dsn, demo=False))
    ports, agent = start_consul(log_dir)
    agents = [agent]
    procs = []
    try:
        procs.append(Proc(service_process("inventory", ports, fresh_dsn, port=0, name="inventory-reg",
                                          CONSUL_CHECK_INTERVAL="1s"), log_dir))
        wait_up(procs, lambda: passing_instances(ports, "inventory"), 30, "inventory passing")
        yield ports, agents, procs[0]
    finally:
        for p in procs:
            p.stop()
        for a in agents:
            a.stop()


def service_id(proc: Proc) -> str:
    return f"inventory-{socket.gethostname()}-{proc.pid}"


@contextlib.contextmanager
def paused(proc: Proc):
    """The service process stopped (SIGSTOP) meanwhile: it looks for its registration every few seconds and puts it
    back when it is gone, which on a loaded machine could come before the test has seen it gone."""
    proc.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.signal(signal.SIGCONT)


def test_a_service_registers_again_after_its_consul_agent_restarts(private, log_dir):
    ports, agents, proc = private
    agents[0].stop()  # a dev agent keeps nothing: every registration is gone with it
    agents.append(start_consul(log_dir, ports=ports)[1])  # on the same ports, where the service looks for it
    (entry,) = wait_until(lambda: passing_instances(ports, "inventory"), 20, what="inventory registered again")
    assert entry["Service"]["ID"] == service_id(proc)
    assert proc.popen.poll() is None, "without a restart of the service"
    # Logged once Consul has answered the registration, which the test may have seen first.
    wait_until(lambda: "registered again" in proc.log(), 10, what="the service to log its registering again")


def test_a_reaped_registration_comes_back(private):
    ports, _, proc = private
    request = urllib.request.Request(f"http://{ports.consul_addr}/v1/agent/service/deregister/{service_id(proc)}",
                                     method="PUT")
    with paused(proc):
        urllib.request.urlopen(request, timeout=5).read()  # as Consul does to a registration failing for a minute
        assert passing_instances(ports, "inventory") == []
    (entry,) = wait_until(lambda: passing_instances(ports, "inventory"), 20, what="inventory registered again")
    assert entry["Service"]["ID"] == service_id(proc)
    _, body = http_get(f"http://{ports.consul_addr}/v1/agent/checks")
    (check,) = [c for c in json.loads(body).values() if c["ServiceID"] == service_id(proc)]
    assert check["Type"] == "grpc"


async def test_readiness_does_not_wait_for_a_busy_pool(fresh_dsn):
    """Every pool connection taken (a flash sale at full tilt): the database still answers, so the service is ready."""
    pool = await open_pool(fresh_dsn, max_size=1)
    readiness = Readiness(fresh_dsn)
    try:
        async with pool.connection():
            assert await readiness.probe() is True
    finally:
        await readiness.close()
        await pool.close()


async def test_readiness_follows_the_database(fresh_dsn, pg_admin_dsn):
    readiness = Readiness(fresh_dsn)
    try:
        assert await readiness.probe() is True
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as admin:
            # The probe's own connection dies (a database restart): within two probes it has reconnected.
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert await readiness.probe() or await readiness.probe()
    finally:
        await readiness.close()
    missing = Readiness(dsn_for(pg_admin_dsn, "no_such_database"))
    assert await missing.probe() is False


async def test_clients_keep_their_last_instances_while_consul_has_none_registered(private):
    ports, _, proc = private
    client = shop_consul.connect("127.0.0.1", ports.consul_http)
    discovery = Discovery(client, "inventory")
    try:
        discovery.start()
        port = passing_instances(ports, "inventory")[0]["Service"]["Port"]
        expected = [Instance("127.0.0.1", port, service_id(proc))]
        await asyncio.to_thread(wait_until, lambda: discovery.instances() == expected, 10, 0.1, "listed")
        with paused(proc):  # gone from Consul, not failing, for as long as the test looks
            await shop_consul.deregister(client, service_id(proc))
            await asyncio.sleep(1.0)
            assert discovery.instances() == expected
        # It registers again by itself and stays listed throughout.
        await asyncio.to_thread(wait_until, lambda: passing_instances(ports, "inventory"), 20, 0.2, "back")
        assert discovery.instances() == expected
    finally:
        await discovery.stop()
        await client.close()


def endpoints(eds_dir, cluster: str) -> list[int]:
    """The ports of a cluster's endpoints in the EDS file gateway.sync keeps for Envoy."""
    doc = json.loads((eds_dir / f"{cluster}.json").read_text())
    return [e["endpoint"]["address"]["socket_address"]["port_value"]
            for group in doc["resources"][0]["endpoints"] for e in group["lb_endpoints"]]


def test_envoys_endpoints_outlive_a_consul_restart(private, log_dir, tmp_path):
    ports, agents, proc = private
    port = passing_instances(ports, "inventory")[0]["Service"]["Port"]
    eds = tmp_path / "eds"
    eds.mkdir()
    sync = Proc(ProcessSpec("gateway-sync", [sys.executable, "-m", "gateway.sync", "--eds-dir", str(eds)],
                            dict(os.environ, CONSUL_HTTP_ADDR=ports.consul_addr)), log_dir)
    try:
        wait_until(lambda: (eds / "inventory.json").exists() and endpoints(eds, "inventory") == [port], 20,
                   what="the endpoint written")
        agents[0].stop()
        agents.append(Proc(consul_process(ports), log_dir))
        seen = set()
        # Through the restart and the service's registering again, Envoy's endpoints never go empty.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seen.add(tuple(endpoints(eds, "inventory")))
            time.sleep(0.05)
        assert seen == {(port,)}, seen
        assert passing_instances(ports, "inventory"), "registered again"
    finally:
        sync.stop()
