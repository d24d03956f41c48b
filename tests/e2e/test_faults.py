"""Faults under load: two replicas of every service under supervisord behind Envoy, shoppers buying all along, and
replicas stopped or killed, Consul restarted and Postgres cut off, on purpose. Each test ends with the suite-wide audit clean (nothing oversold, no hold
lost) and prints its figures: requests, failures, and how long the suite took to answer only as it should again."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import signal
import time

import psycopg
import pytest

from devstack import supervise
from devstack.postgres import create_database, dsn_for
from devstack.prepare import prepare
from devstack.procs import consul_ready, wait_until
from devstack.stack import SERVICE_MODULES, Ports, envoy_hosts, http_get, passing_instances
from tests.e2e.netlink import Link
from tests.e2e.replicated import FAULT_ENV, put_kv, start_replicated
from tests.e2e.sale import PAYMENT_WINDOW_SECONDS, SHOPPERS, Sale, restock, settled_and_clean

pytestmark = pytest.mark.e2e

REPLICAS = 2
WINDOW_KEY = "shop/config/payment_window_seconds"
# How long Postgres stays out of the services' reach: past Consul's reaping of a failing registration (1 min).
OUTAGE_SECONDS = 120


@dataclasses.dataclass
class Stack:
    ports: Ports
    dsn: str
    secrets: object
    run_dir: object
    supervisor: object
    # The services reach Postgres through it (the audit does not): the test cuts it.
    link: Link

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    def replicas_back(self) -> None:
        """Waits until every service has its REPLICAS passing instances again; says what Consul holds if not."""
        try:
            wait_until(lambda: all(len(self.pids(s)) == REPLICAS for s in SERVICE_MODULES), 60,
                       what="every service back to its replicas")
        except AssertionError as err:
            seen = {s: sorted((e["Service"]["ID"], [c["Status"] for c in e["Checks"]])
                              for e in all_instances(self.ports, s)) for s in SERVICE_MODULES}
            raise AssertionError(f"{err}; Consul has {seen}") from None

    def all_pids(self) -> set[int]:
        """The pids of every passing instance of the suite."""
        return set().union(*(self.pids(s) for s in SERVICE_MODULES))

    def put_kv(self, key: str, value: str) -> None:
        put_kv(self.ports, key, value)

    def pids(self, service: str) -> set[int]:
        """The pids of the passing instances of `service` (an instance id ends with its process's pid)."""
        return {int(e["Service"]["ID"].rsplit("-", 1)[1]) for e in passing_instances(self.ports, service)}


def upstream_of(dsn: str) -> str | tuple[str, int]:
    """Where the server of `dsn` listens: its Unix socket (the embedded server), or its host and port."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    host, port = info.get("host") or "127.0.0.1", int(info.get("port") or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


@pytest.fixture(scope="module")
def stack(pg_admin_dsn, tmp_path_factory, tls_dir):
    run_dir = tmp_path_factory.mktemp("faults")
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    asyncio.run(prepare(dsn))
    link = Link(upstream_of(dsn))
    services_dsn = psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=str(link.port))
    secrets = run_dir / "secrets"
    env = FAULT_ENV

    try:
        ports, supervisor = start_replicated(services_dsn, run_dir, secrets, tls_dir, replicas=REPLICAS, env=env,
                                             kv={WINDOW_KEY: str(PAYMENT_WINDOW_SECONDS)})
        try:
            yield Stack(ports, dsn, secrets, run_dir, supervisor, link)
        finally:
            supervise.stop(supervisor)
    finally:
        link.close()


def all_instances(ports: Ports, service: str) -> list[dict]:
    """Consul's entries for every registered instance of `service`, with their checks, passing or not."""
    status, body = http_get(f"http://{ports.consul_addr}/v1/health/service/{service}")
    return json.loads(body) if status == 200 else []


async def test_sigterm_of_a_replica_of_each_service_under_load_fails_no_request(stack):
    restock(stack, 100_000)
    sale = Sale(stack)
    stopped = []

    async def faults():
        for service in SERVICE_MODULES:
            pid = min(stack.pids(service))
            os.kill(pid, signal.SIGTERM)  # supervisord starts it again once it has stopped
            stopped.append(pid)
            await asyncio.sleep(2)

    await sale.run(faults)
    counts = collections.Counter(status for _, _, status in sale.answers)
    print(f"\nSIGTERM of a replica of each service under load: {len(sale.answers)} requests, {dict(counts)}")
    assert sale.failures() == [], sale.details
    stack.replicas_back()
    assert not set(stopped) & set().union(*(stack.pids(s) for s in SERVICE_MODULES))
    settled_and_clean(stack)


async def test_kill_9_of_a_replica_of_each_service_under_load_fails_only_calls_in_flight(stack):
    """The killed replicas leave Consul's passing set and Envoy's hosts, and the replacements supervisord starts
    join both. The replica killed is the one on a port of its own: the first replica's replacement takes the
    configured port again, so only the other's address tells whether Envoy dropped the dead one."""
    restock(stack, 100_000)
    sale = Sale(stack)
    doomed = {s: next(e["Service"] for e in passing_instances(stack.ports, s)
                      if e["Service"]["Port"] != stack.ports.services[s]) for s in SERVICE_MODULES}
    dead_ids = {d["ID"] for d in doomed.values()}
    dead_hosts = {s: (d["Address"], d["Port"]) for s, d in doomed.items()}
    times: dict[str, float] = {}

    def in_consul() -> bool:
        return bool(dead_ids & {e["Service"]["ID"] for s in SERVICE_MODULES for e in passing_instances(stack.ports, s)})

    def in_envoy() -> bool:
        return any(dead_hosts[s] in envoy_hosts(stack.ports.envoy_admin, s) for s in SERVICE_MODULES)

    def envoy_follows_consul() -> bool:
        """Envoy uses exactly the passing instances, every one of them healthy."""
        for s in SERVICE_MODULES:
            passing = {(e["Service"]["Address"], e["Service"]["Port"]) for e in passing_instances(stack.ports, s)}
            hosts = envoy_hosts(stack.ports.envoy_admin, s)
            if len(passing) != REPLICAS or set(hosts) != passing or any(hosts.values()):
                return False
        return True

    async def faults():
        for d in doomed.values():
            os.kill(int(d["ID"].rsplit("-", 1)[1]), signal.SIGKILL)
        times["killed"] = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: not in_consul(), 30, 0.1, "the dead out of Consul's passing set")
        times["consul"] = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: not in_envoy(), 30, 0.1, "the dead out of Envoy's hosts")
        times["envoy"] = time.monotonic()
        await asyncio.to_thread(stack.replicas_back)
        times["back"] = time.monotonic()
        await asyncio.to_thread(wait_until, envoy_follows_consul, 30, 0.1, "the replacements among Envoy's hosts")
        times["joined"] = time.monotonic()
        await asyncio.sleep(max(0.0, times["killed"] + 8 - time.monotonic()))

    await sale.run(faults)
    killed = times["killed"]
    failures = sale.failures()
    last = max((t for t, _, _ in failures), default=killed)
    counts = collections.Counter(status for _, _, status in sale.answers)
    print(f"\nkill -9 of a replica of each service under load: {len(sale.answers)} requests, {dict(counts)};"
          f" {len(failures)} failed, the last {last - killed:.1f} s after the kills; the dead out of Consul's passing"
          f" set {times['consul'] - killed:.1f} s and out of Envoy's hosts {times['envoy'] - killed:.1f} s after;"
          f" the replacements passing in Consul {times['back'] - killed:.1f} s and healthy in Envoy"
          f" {times['joined'] - killed:.1f} s after")
    for line in sale.details[:20]:
        print("  ", line[:300])
    # Errors only around the kills (the calls that were in flight on the killed replicas), then none.
    assert all(t < killed + 5 for t, _, _ in failures), failures
    assert len(failures) <= SHOPPERS * 4, failures
    assert not sale.failures(since=killed + 5)
    assert not in_consul() and not in_envoy(), "a dead replica is back"
    settled_and_clean(stack)


async def test_consul_agent_restart_under_load_fails_no_request_and_registrations_come_back(stack):
    """The dev agent keeps its state in memory: a restart loses every registration and every KV setting. The suite
    goes on serving on the endpoints it last knew, and every instance registers again by itself."""
    restock(stack, 100_000)
    sale = Sale(stack)
    before = stack.all_pids()
    times: dict[str, float] = {}

    ctl_dir = stack.run_dir / "supervisor"
    consul_pid = supervise.ctl(ctl_dir, "pid", "consul").strip()

    async def faults():
        times["restart"] = time.monotonic()
        await asyncio.to_thread(supervise.ctl, ctl_dir, "restart", "consul")
        await asyncio.to_thread(wait_until, lambda: consul_ready(stack.ports.consul_addr), 30, what="consul")
        times["consul"] = time.monotonic()
        stack.put_kv(WINDOW_KEY, str(PAYMENT_WINDOW_SECONDS))  # an operator writes the settings again
        await asyncio.to_thread(stack.replicas_back)
        times["registered"] = time.monotonic()
        await asyncio.sleep(3)

    await sale.run(faults)
    counts = collections.Counter(status for _, _, status in sale.answers)
    print(f"\nConsul agent restart under load: {len(sale.answers)} requests, {dict(counts)}; Consul answered again "
          f"{times['consul'] - times['restart']:.1f} s after the restart began, and every replica was registered and "
          f"passing {times['registered'] - times['restart']:.1f} s after it")
    assert supervise.ctl(ctl_dir, "pid", "consul").strip() not in ("", consul_pid)  # a new agent, empty at start
    assert sale.failures() == [], sale.details
    assert stack.all_pids() == before  # the same processes: nothing was restarted to get back into Consul
    settled_and_clean(stack)


async def test_postgres_unreachable_for_two_minutes_then_back_serves_again_without_a_restart(stack):
    """Every byte between the services and Postgres stops for OUTAGE_SECONDS: longer than Consul keeps a failing
    registration. Then the link is back, and the same processes serve again, registered by themselves."""
    restock(stack, 100_000)
    sale = Sale(stack)
    before = stack.all_pids()
    times: dict[str, float] = {}

    async def faults():
        stack.link.cut()
        times["cut"] = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
        # By now Consul has reaped every registration, whose check failed for longer than it keeps one.
        times["registered"] = sum(len(all_instances(stack.ports, s)) for s in SERVICE_MODULES)
        stack.link.restore()
        times["restored"] = time.monotonic()
        await asyncio.to_thread(stack.replicas_back)
        times["passing"] = time.monotonic()
        await asyncio.sleep(10)

    await sale.run(faults)
    restored = times["restored"]
    during = [a for a in sale.answers if times["cut"] <= a[0] < restored]
    after = sale.failures(since=restored)
    last = max((t for t, _, _ in after), default=restored)
    first_paid = sale.first("pay", restored)
    counts = collections.Counter(status for _, _, status in sale.answers)
    print(f"\nPostgres unreachable for {OUTAGE_SECONDS} s under load: {len(sale.answers)} requests, {dict(counts)}; "
          f"{len(during)} answered during the outage, at whose end Consul had {times['registered']} instances "
          f"registered; {len(sale.failures(times['cut']))} failed in all, the last "
          f"{last - restored:.1f} s after the link was back; every replica passing again "
          f"{times['passing'] - restored:.1f} s after it, the first paid order "
          f"{(first_paid - restored) if first_paid else float('nan'):.1f} s after it")
    assert times["registered"] == 0
    assert stack.all_pids() == before  # served again by the same processes, none restarted
    assert first_paid is not None, sale.details[-20:]
    # Once every replica passes again, every request is answered as it should be.
    assert not sale.failures(since=times["passing"] + 2), sale.details[-20:]
    settled_and_clean(stack)
