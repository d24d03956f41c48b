"""Failover of the Postgres primary mid-sale on a Patroni cluster: the services follow the new primary without a restart."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field

import psycopg
import pytest

from devstack import supervise
from devstack.patroni import Cluster, Member, patronictl
from devstack.procs import wait_until
from devstack.stack import SERVICE_MODULES, http_get, passing_instances
from tests.e2e.replicated import OnCluster, cluster_suite
from tests.e2e.sale import PAYMENT_WINDOW_SECONDS, Sale, paid_orders_kept, restock, settled_and_clean

pytestmark = pytest.mark.e2e

_LOGGER = logging.getLogger(__name__)

REPLICAS = 2
WINDOW_KEY = "shop/config/payment_window_seconds"
# How long after the new primary takes writes the shoppers may still see failures: the calls in flight when it went,
# and those on connections the services had not yet found broken.
SETTLE_SECONDS = 15
# The answers a failover may give besides EXPECTED: retryable refusals (the database was unreachable for the call,
# or the call's deadline passed while it was). Anything else of the 5xx is a defect.
RETRYABLE = {503, 504}
WRITES = ("add", "checkout", "pay")


@pytest.fixture(scope="module")
def suite(tmp_path_factory, tls_dir):
    with cluster_suite(tmp_path_factory.mktemp("failover"), tls_dir, replicas=REPLICAS,
                       kv={WINDOW_KEY: str(PAYMENT_WINDOW_SECONDS)}) as on:
        yield on


def service_pids(suite: OnCluster) -> set[int]:
    """The pids of every passing instance of the suite (an instance id ends with its process's pid)."""
    return {int(e["Service"]["ID"].rsplit("-", 1)[1]) for s in SERVICE_MODULES
            for e in passing_instances(suite.ports, s)}


def postmaster_pid(member: Member) -> int:
    """The pid of `member`'s postmaster: the first line of its postmaster.pid (Patroni 4.1's /patroni status does not
    carry it)."""
    return int((member.data_dir / "postmaster.pid").read_text().splitlines()[0])


def serving(cluster: Cluster) -> tuple[int, float]:
    """The port of the member the cluster's DSN reaches for writes, and when (epoch) its postmaster started."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        port, started = conn.execute("SELECT inet_server_port(), extract(epoch FROM pg_postmaster_start_time())"
                                     ).fetchone()
    return int(port), float(started)


def member_at(cluster: Cluster, port: int) -> Member:
    return next(m for m in cluster.members if m.pg_port == port)


@dataclass
class Fault:
    """What a test measured of one fault: when it came, when a primary took writes again, when every member was
    healthy again, and which member was then the primary."""

    at: float = 0.0  # time.monotonic() of the fault
    wall: float = 0.0  # time.time() of the fault
    up: float = 0.0  # a primary took writes again (a new one, or the old one restarted)
    healthy: float = 0.0
    primary: str = ""
    notes: list[str] = field(default_factory=list)


async def primary_back(suite: OnCluster, old: Member, fault: Fault, *, restarted_ok: bool,
                       healthy: bool = True) -> None:
    """Waits until the cluster's DSN reaches a primary other than `old`, or (with `restarted_ok`) `old` restarted
    after the fault; then (with `healthy`) until every member is healthy. Records both moments."""

    def new_primary() -> bool:
        try:
            port, started = serving(suite.cluster)
        except psycopg.OperationalError:
            return False
        if port != old.pg_port or (restarted_ok and started > fault.wall):
            fault.primary = member_at(suite.cluster, port).name
            return True
        return False

    await asyncio.to_thread(wait_until, new_primary, 180, 0.2, "a primary taking writes again")
    fault.up = time.monotonic()
    if healthy:
        await asyncio.to_thread(suite.cluster.wait_healthy, 600)
        fault.healthy = time.monotonic()


def report(title: str, sale: Sale, fault: Fault) -> dict[int, int]:
    """Prints the test's figures; returns the failed requests by status."""
    counts = collections.Counter(status for _, _, status in sale.answers)
    failed = collections.Counter(status for _, _, status in sale.failures())
    by_step = collections.Counter((step, status) for _, step, status in sale.failures())
    ok = sorted(t for t, step, status in sale.answers if step in WRITES and status == 200 and t >= fault.at)
    gaps = [b - a for a, b in zip([fault.at, *ok], ok)]
    last = max((t for t, _, _ in sale.failures()), default=None)
    print(f"\n{title}: {len(sale.answers)} requests, {dict(sorted(counts.items()))}; "
          f"{sum(failed.values())} failed, {dict(sorted(failed.items()))} (by step {dict(sorted(by_step.items()))}),"
          f" the last {(last - fault.at) if last else float('nan'):.1f} s after the fault"
          f" ({(last - fault.up) if last else float('nan'):+.1f} s from a primary taking writes); "
          f"{max(gaps, default=float('nan')):.1f} s at most without a successful write; "
          f"a primary taking writes {fault.up - fault.at:.1f} s and every member healthy "
          f"{fault.healthy - fault.at:.1f} s after the fault; the primary now {fault.primary}; "
          f"{len(sale.paid)} orders paid")
    for note in fault.notes:
        print("   ", note)
    for line in sale.details[:15]:
        print("   ", line[:300])
    return dict(failed)


def assert_followed(suite: OnCluster, sale: Sale, fault: Fault, failed: dict[int, int], before: set[int]) -> None:
    """What every failover must keep: no 5xx but the retryable ones, failures only around the fault, the same
    service processes serving, the audit clean and every order acknowledged PAID still PAID."""
    assert not {s for s in failed if s >= 500 or s == 0} - RETRYABLE, sale.details
    late = [f for f in sale.failures() if f[0] > fault.up + SETTLE_SECONDS]
    assert not late, (late, sale.details[-20:])
    assert sale.first("pay", fault.up) is not None, "no order paid after the failover"
    # The same processes serve: none was restarted to reach the new primary. A replica whose health check failed
    # while the database was away is back in Consul's passing set by itself.
    try:
        wait_until(lambda: service_pids(suite) == before, 180, 0.5, "the same service processes passing")
    except AssertionError:
        raise AssertionError(f"service pids before {sorted(before)}, now {sorted(service_pids(suite))}") from None
    suite.cluster.wait_healthy(600)
    settled_and_clean(suite)
    assert paid_orders_kept(sale, suite.dsn) > 0


def test_consul_lists_the_members_as_service_postgres_with_their_roles(suite):
    """Before any fault: Patroni registered every member in Consul, one `primary` and two `replica`s."""
    status, body = http_get(f"http://{suite.ports.consul_addr}/v1/health/service/postgres?passing=true")
    assert status == 200
    entries = json.loads(body)
    tags = [e["Service"]["Tags"] for e in entries]
    assert len(entries) == 3
    assert sum("primary" in t for t in tags) == 1 and sum("replica" in t for t in tags) == 2, tags
    primary = next(e["Service"] for e in entries if "primary" in e["Service"]["Tags"])
    assert suite.cluster.primary().pg_port == primary["Port"]


def test_the_primary_replicates_synchronously_and_the_dsn_reaches_only_it(suite):
    with psycopg.connect(suite.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        sync = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()
        names = conn.execute("SHOW synchronous_standby_names").fetchone()
    assert sync == (1,) and names is not None and names[0], names


async def test_kill_9_of_the_primarys_postmaster_mid_sale_loses_nothing_acknowledged(suite):
    """Patroni either starts the killed postmaster again (crash recovery) or a standby takes over; the sale goes on
    on the same service processes."""
    suite.cluster.wait_healthy(600)
    restock(suite, 100_000)
    before = service_pids(suite)
    old = suite.cluster.primary()
    assert old is not None
    sale = Sale(suite)
    fault = Fault()

    async def faults():
        pid = postmaster_pid(old)
        fault.at, fault.wall = time.monotonic(), time.time()
        os.kill(pid, signal.SIGKILL)
        fault.notes.append(f"killed the postmaster {pid} of {old.name}")
        await primary_back(suite, old, fault, restarted_ok=True)
        await asyncio.sleep(max(0.0, fault.up + SETTLE_SECONDS - time.monotonic()))

    await sale.run(faults)
    failed = report(f"kill -9 of the primary's postmaster ({old.name})", sale, fault)
    assert_followed(suite, sale, fault, failed, before)


async def test_kill_9_of_the_primarys_patroni_and_postgres_promotes_a_standby_and_the_old_one_rejoins(suite):
    """The primary member's Patroni and postmaster die together, and stay dead past the ttl (as a machine that
    reboots): its leader lock in Consul expires and a standby is promoted. Then supervisord starts the dead Patroni
    again, which rejoins as a standby (pg_rewind) by itself.

    Held: a Patroni started again at once (supervisord does so within a second) finds its own leader key still in
    Consul, recreates it ("session mismatch"), recovers its Postgres and stays the primary; no standby is promoted.
    So the data tier's supervisord is paused (SIGSTOP) from the kill until a standby is promoted: it starts nothing
    meanwhile, while Consul and the other members, its children, run on."""
    suite.cluster.wait_healthy(600)
    restock(suite, 100_000)
    before = service_pids(suite)
    old = suite.cluster.primary()
    assert old is not None
    ctl_dir = suite.run_dir / "supervisor-db"
    program = f"patroni-{old.name}"
    patroni_pid = int(supervise.ctl(ctl_dir, "pid", program).strip())
    sale = Sale(suite)
    fault = Fault()

    async def faults():
        pg_pid = postmaster_pid(old)
        os.kill(suite.data_tier.pid, signal.SIGSTOP)
        try:
            fault.at, fault.wall = time.monotonic(), time.time()
            for pid in (patroni_pid, pg_pid):
                os.kill(pid, signal.SIGKILL)
            fault.notes.append(f"killed Patroni {patroni_pid} and the postmaster {pg_pid} of {old.name}")
            await primary_back(suite, old, fault, restarted_ok=False, healthy=False)
        finally:
            os.kill(suite.data_tier.pid, signal.SIGCONT)
        fault.notes.append(f"supervisord resumed {time.monotonic() - fault.at:.1f} s after the kill")
        await asyncio.to_thread(suite.cluster.wait_healthy, 600)
        fault.healthy = time.monotonic()
        await asyncio.sleep(max(0.0, fault.up + SETTLE_SECONDS - time.monotonic()))

    await sale.run(faults)
    new_pid = int(supervise.ctl(ctl_dir, "pid", program).strip())
    role = (suite.cluster.status(old) or {}).get("role")
    fault.notes.append(f"{program} runs again as pid {new_pid}, {old.name} is now {role}")
    failed = report(f"kill -9 of the primary's Patroni and Postgres ({old.name})", sale, fault)
    assert fault.primary != old.name
    assert new_pid != patroni_pid and role == "replica", (new_pid, role)
    assert_followed(suite, sale, fault, failed, before)


async def test_planned_switchover_mid_sale_fails_no_request_but_retryable_refusals(suite):
    """`patronictl switchover` mid-sale: the old primary is demoted (its sessions ended), the candidate promoted; the
    calls in flight may be refused as retryable (503) or shed (429), nothing else, and never a 500."""
    suite.cluster.wait_healthy(600)
    restock(suite, 100_000)
    before = service_pids(suite)
    old = suite.cluster.primary()
    assert old is not None
    state = suite.cluster.cluster_state() or {}
    candidate = next(m["name"] for m in state.get("members", []) if m.get("role") == "sync_standby")
    sale = Sale(suite)
    fault = Fault()

    async def faults():
        fault.at, fault.wall = time.monotonic(), time.time()
        # Measured while patronictl runs: it returns only once it has seen the switchover through.
        switching = asyncio.create_task(asyncio.to_thread(
            patronictl, suite.cluster, "switchover", "--leader", old.name, "--candidate", candidate, "--force",
            timeout=300))
        await primary_back(suite, old, fault, restarted_ok=False)
        done = await switching
        fault.notes.append(f"patronictl switchover {old.name} -> {candidate}: rc {done.returncode} after "
                           f"{time.monotonic() - fault.at:.1f} s, {(done.stdout + done.stderr).strip().splitlines()[-1:]}")
        assert done.returncode == 0, done.stdout + done.stderr
        await asyncio.sleep(max(0.0, fault.up + SETTLE_SECONDS - time.monotonic()))

    await sale.run(faults)
    failed = report(f"switchover {old.name} -> {candidate}", sale, fault)
    assert fault.primary == candidate
    assert set(failed) <= {503}, (failed, sale.details)
    assert_followed(suite, sale, fault, failed, before)
    _LOGGER.info("cluster after the switchover: %s", json.dumps(suite.cluster.cluster_state()))
