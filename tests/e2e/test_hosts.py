"""Several hosts for real (devstack.multihost): Postgres on its own host, a replica of every service on each of two
hosts with a Consul server each, a third Consul server, and Envoy on a fifth host; every host a network namespace
with its own address. Shoppers buy through the gateway all along while the Consul leader is lost, while a host is
cut off from the others, while two of the three Consul servers are lost, and while a server comes back without its
disk; each test prints its figures and ends with the suite audit clean."""

from __future__ import annotations

import asyncio
import collections
import shutil
import signal
import time
import urllib.request

import httpx
import pytest

from devstack.multihost import APP_HOSTS, Topology
from devstack.procs import wait_until
from devstack.stack import SERVICE_MODULES
from tests.e2e.sale import PAYMENT_WINDOW_SECONDS, Sale, restock, settled_and_clean

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, log_dir):
    work = tmp_path_factory.mktemp("hosts")
    # A tag and subnet of their own: `make hosts` (tag m, 10.213.7.0/24) may run beside the tests.
    topology = Topology(work, log_dir, tag="t", subnet="10.213.8.0/24", service_env=dict(
        RECONCILE_INTERVAL_SECONDS="2", RECONCILE_MIN_AGE_SECONDS="5", CONSUL_CHECK_INTERVAL="1s",
        CATALOG_CACHE_SECONDS="0", SHUTDOWN_GRACE_SECONDS="10"))
    started = time.monotonic()
    topology.start()
    print(f"\nthe topology ({len(topology.network.hosts)} hosts, a Patroni cluster of {len(topology.cluster.members)} "
          f"members) up in {time.monotonic() - started:.1f} s")
    try:
        request = urllib.request.Request(f"http://{topology.consul()}/v1/kv/shop/config/payment_window_seconds",
                                         data=str(PAYMENT_WINDOW_SECONDS).encode(), method="PUT")
        urllib.request.urlopen(request, timeout=10).read()
        yield topology
    finally:
        topology.stop()


def everywhere_again(hosts: Topology, timeout: float = 90) -> None:
    wait_until(hosts.everywhere, timeout, interval=0.3,
               what=f"every service passing on {APP_HOSTS} ({ {s: hosts.passing(s) for s in SERVICE_MODULES} })")


def whole(peers: dict[str, tuple[str, bool]]) -> bool:
    """Whether the Consul cluster is whole: three Raft peers, each a voter (a server that joins again votes only
    once autopilot has seen it stable for 10 s)."""
    return len(peers) == 3 and all(voter for _, voter in peers.values())


def three_voters(hosts: Topology, what: str = "three voters before the fault") -> None:
    """Waits until the cluster is whole."""
    wait_until(lambda: whole(hosts.raft_peers()), 120, 0.2, what)


def test_a_purchase_crosses_hosts_over_mutual_tls(hosts):
    """The gateway on its host, the services on two others, Postgres on a fourth: a whole purchase."""
    assert {s: hosts.passing(s) for s in SERVICE_MODULES} == dict.fromkeys(SERVICE_MODULES, set(APP_HOSTS))
    restock(hosts, 1000)
    auth = {"Authorization": f"Bearer {hosts.token('hosts-buyer')}"}
    with httpx.Client(base_url=hosts.base, timeout=30) as shop:
        assert shop.post("/chart", json={"sku": "HE-0042", "qty": 2}, headers=auth).status_code == 200
        order = shop.post("/checkout", json={}, headers=auth | {"Idempotency-Key": "hosts-1"})
        assert order.status_code == 200, order.text
        paid = shop.post("/payment", json={"orderId": order.json()["orderId"], "amount": order.json()["total"],
                                           "method": "card", "token": "tok_visa"},
                         headers=auth | {"Idempotency-Key": "hosts-pay-1"})
        assert paid.status_code == 200, paid.text
    settled_and_clean(hosts)


async def test_losing_the_consul_leader_under_load_fails_no_request_and_it_comes_back(hosts):
    restock(hosts, 100_000)
    sale = Sale(hosts)
    times: dict[str, float] = {}
    lost = hosts.leader()

    async def faults():
        hosts.procs[f"consul@{lost}"].signal(signal.SIGKILL)
        times["killed"] = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: hosts.leader() not in ("", lost), 60, 0.1, "a new leader")
        times["leader"] = time.monotonic()
        await asyncio.sleep(5)
        hosts.restart(f"consul@{lost}")  # the same node and data, as a supervisor would
        times["restarted"] = time.monotonic()
        await asyncio.to_thread(everywhere_again, hosts)
        times["back"] = time.monotonic()
        await asyncio.sleep(3)

    await sale.run(faults)
    counts = collections.Counter(status for _, _, status in sale.answers)
    print(f"\nConsul leader ({lost}) killed under load: {len(sale.answers)} requests, {dict(counts)}; "
          f"{hosts.leader()} leads now, elected {times['leader'] - times['killed']:.1f} s after the kill; the lost "
          f"server started again, every service passing on both hosts {times['back'] - times['restarted']:.1f} s "
          f"after")
    assert sale.failures() == [], sale.details
    settled_and_clean(hosts)


async def test_a_host_cut_off_during_a_sale_then_back(hosts):
    """A host with a replica of every service and a Consul server loses its cable for 30 s, then gets it back: the
    one that leads the Consul cluster if one of those does (the hardest case: the cluster has to elect another
    while it learns that the host is gone), else h2."""
    cut_seconds = 30
    three_voters(hosts)
    host = hosts.leader() if hosts.leader() in APP_HOSTS else "h2"
    other = next(h for h in APP_HOSTS if h != host)
    led = hosts.leader() == host
    restock(hosts, 100_000)
    sale = Sale(hosts)
    times: dict[str, float] = {}

    async def faults():
        hosts.net.cut(host)
        times["cut"] = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: all(hosts.passing(s) == {other} for s in SERVICE_MODULES), 60,
                                0.2, f"{host}'s replicas out of the passing set")
        times["dropped"] = time.monotonic()
        await asyncio.sleep(max(0.0, cut_seconds - (times["dropped"] - times["cut"])))
        hosts.net.restore(host)
        times["restored"] = time.monotonic()
        await asyncio.to_thread(everywhere_again, hosts)
        times["back"] = time.monotonic()
        await asyncio.sleep(5)

    await sale.run(faults)
    cut = times["cut"]
    failures = sale.failures()
    last = max((sent for sent, _, _, _ in sale.unexpected), default=cut)
    counts = collections.Counter(status for _, _, status in sale.answers)
    during = collections.Counter(s for t, _, s in sale.answers if cut <= t < times["restored"])
    print(f"\n{host}{' (the Consul leader)' if led else ''} cut off for {times['restored'] - cut:.0f} s under load: {len(sale.answers)} requests, {dict(counts)}; "
          f"during the cut {dict(during)}; {len(failures)} failed, the last sent {last - cut:.1f} s after the cut; its "
          f"replicas out of Consul's passing set {times['dropped'] - cut:.1f} s after the cut; back on both hosts "
          f"{times['back'] - times['restored']:.1f} s after the cable was")
    for (sent, _, _, _), line in list(zip(sale.unexpected, sale.details))[:20]:
        print(f"   sent {sent - cut:.1f} s after the cut: {line[:200]}")
    # Failures only of requests sent before the suite knew that the host is gone (those in flight on h2 wait for their
    # route's timeout); none of those sent once its replicas were out, nor after it is back.
    assert not sale.failures_sent(since=times["dropped"] + 2), sale.details[-10:]
    settled_and_clean(hosts)


async def test_losing_the_consul_quorum_under_load_serves_on_what_the_suite_last_knew(hosts):
    """Two of the three Consul servers are lost at once, one of them on a host with services: the cluster has no
    leader, so nothing Consul holds can change, and the agent the services on that host talk to is gone. The suite
    serves on the instances it last knew. When the two come back, with their data, a leader is elected and every
    registration passes again by itself."""
    lost = ("h1", "h3")
    out_seconds = 20
    three_voters(hosts)
    restock(hosts, 100_000)
    sale = Sale(hosts)
    times: dict[str, float] = {}

    async def faults():
        for host in lost:
            hosts.procs[f"consul@{host}"].signal(signal.SIGKILL)
        times["killed"] = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: hosts.leader() == "", 60, 0.1, "the cluster without a leader")
        times["leaderless"] = time.monotonic()
        await asyncio.sleep(out_seconds)
        for host in lost:
            hosts.restart(f"consul@{host}")  # the same nodes and data, as a supervisor would
        times["restarted"] = time.monotonic()
        await asyncio.to_thread(wait_until, hosts.leader, 60, 0.1, "a leader again")
        times["leader"] = time.monotonic()
        await asyncio.to_thread(everywhere_again, hosts)
        times["back"] = time.monotonic()
        await asyncio.to_thread(three_voters, hosts, "three voters again")
        times["whole"] = time.monotonic()
        await asyncio.sleep(3)

    await sale.run(faults)
    counts = collections.Counter(status for _, _, status in sale.answers)
    without = collections.Counter(s for t, _, s in sale.answers if times["leaderless"] <= t < times["leader"])
    print(f"\nConsul servers of {' and '.join(lost)} killed under load: {len(sale.answers)} requests, {dict(counts)}; "
          f"no leader {times['leaderless'] - times['killed']:.1f} s after the kill, for "
          f"{times['leader'] - times['leaderless']:.1f} s, answers then {dict(without)}; a leader "
          f"{times['leader'] - times['restarted']:.1f} s after the servers started again, every service passing on "
          f"both hosts {times['back'] - times['restarted']:.1f} s after, three voters again "
          f"{times['whole'] - times['restarted']:.1f} s after")
    assert sale.failures() == [], sale.details
    assert without[200] > 0  # sold while Consul could not change anything
    settled_and_clean(hosts)


async def test_a_consul_server_that_lost_its_disk_joins_again_under_load(hosts):
    """h3's Consul server is killed and its data removed, as when a server's disk is lost and it is replaced by an
    empty one of the same name and address: the cluster keeps a leader (elects another if h3 led), the new server
    joins the Raft peers in the old one's place, and no request fails."""
    host = "h3"
    restock(hosts, 100_000)
    sale = Sale(hosts)
    times: dict[str, float] = {}
    three_voters(hosts)
    before = hosts.raft_peers()

    def rejoined(peers: dict[str, tuple[str, bool]]) -> bool:
        """Three voters again, the lost one under a new id (the old one gone)."""
        return whole(peers) and peers.get(host, before[host])[0] != before[host][0]

    async def faults():
        proc = hosts.procs[f"consul@{host}"]
        proc.signal(signal.SIGKILL)
        proc.popen.wait(10)
        times["killed"] = time.monotonic()
        shutil.rmtree(hosts.work / f"consul-{host}")
        hosts.restart(f"consul@{host}")
        await asyncio.to_thread(wait_until, lambda: rejoined(hosts.raft_peers()), 120, 0.2,
                                f"{host} a voter again, with a new id")
        times["joined"] = time.monotonic()
        await asyncio.to_thread(everywhere_again, hosts)
        await asyncio.sleep(3)

    await sale.run(faults)
    counts = collections.Counter(status for _, _, status in sale.answers)
    print(f"\nConsul server of {host} lost with its disk under load: {len(sale.answers)} requests, {dict(counts)}; "
          f"a voter again, with a new id, {times['joined'] - times['killed']:.1f} s after; peers {hosts.raft_peers()}")
    assert sale.failures() == [], sale.details
    settled_and_clean(hosts)
