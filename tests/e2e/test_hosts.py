"""Several hosts for real (devstack.multihost): a Patroni cluster of three Postgres members on three hosts, a replica
of every service on each of two hosts with a Consul server each, a third Consul server, and Envoy on a seventh host;
every host a network namespace with its own address. Shoppers buy through the gateway all along while the Consul
leader is lost, while a host of services is cut off from the others, while two of the three Consul servers are
lost, while a server comes back without its disk, and while the Postgres primary's host is cut off; each test
prints its figures and ends with the suite audit clean."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import signal
import sys
import time
import urllib.request

import httpx
import psycopg
import pytest

from devstack.multihost import APP_HOSTS, Topology
from devstack.procs import Proc, wait_until
from devstack.stack import SERVICE_MODULES, ProcessSpec
from tests.e2e.sale import PAYMENT_WINDOW_SECONDS, Sale, paid_orders_kept, restock, settled_and_clean

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
        started = time.monotonic()
        killed = topology.stop()
        print(f"\nthe topology stopped in {time.monotonic() - started:.1f} s; killed after 30 s: {killed or 'none'}")


def everywhere_again(hosts: Topology, timeout: float = 90) -> None:
    try:
        wait_until(hosts.everywhere, timeout, interval=0.3, what=f"every service passing on {APP_HOSTS}")
    except AssertionError as err:
        # What was missing when the wait gave up (not when it began).
        try:
            page: object = httpx.get(f"{hosts.base}/catalogs?limit=1", timeout=5).status_code
        except httpx.HTTPError as page_err:
            page = repr(page_err)
        raise AssertionError(f"{err}: passing {({s: hosts.passing(s) for s in SERVICE_MODULES})}, Consul leader "
                             f"{hosts.leader()!r}, a catalog page through the gateway: {page}") from None


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
    hosts.cluster.wait_healthy(120)
    primary = hosts.cluster.primary()
    assert primary is not None
    timeline = hosts.cluster.status(primary)["timeline"]
    restock(hosts, 100_000)
    sale = Sale(hosts)
    times: dict[str, float] = {}
    primaries: set[str] = set()  # the members that said they were the primary while Consul had no leader

    async def faults():
        for host in lost:
            hosts.procs[f"consul@{host}"].signal(signal.SIGKILL)
        times["killed"] = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: hosts.leader() == "", 60, 0.1, "the cluster without a leader")
        times["leaderless"] = time.monotonic()
        while time.monotonic() < times["leaderless"] + out_seconds:
            member = await asyncio.to_thread(hosts.cluster.primary)
            primaries.add(member.name if member else "none")
            await asyncio.sleep(1)
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
    paid_without = [t for t, step, status in sale.answers
                    if step == "pay" and status == 200 and times["leaderless"] <= t < times["leader"]]
    after = hosts.cluster.primary()
    print(f"Postgres primary {primary.name} (timeline {timeline}) before; while Consul had no leader the primary "
          f"was {sorted(primaries)}, {len(paid_without)} orders paid then; after: "
          f"{after.name if after else None} (timeline {hosts.cluster.status(after)['timeline'] if after else None})")
    assert sale.failures() == [], sale.details
    assert without[200] > 0  # sold while Consul could not change anything
    # Patroni's failsafe mode: the primary, reaching every member, kept its role and took writes all along.
    assert primaries == {primary.name} and after == primary, (primaries, after)
    assert hosts.cluster.status(primary)["timeline"] == timeline
    assert paid_without, "no order paid while Consul had no leader"
    assert paid_orders_kept(sale, hosts.dsn) > 0
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


# A writer run on a db host itself (inside its namespace), so it still reaches that host's Postgres when the host is
# cut off: one INSERT a second into `cut_probe`, each on a connection and a thread of its own and never cancelled (a
# cancelled wait for the synchronous standby would report the commit done), and the member's role as its Patroni
# says; one JSON line per event, timed on the machine's monotonic clock (the test's own).
PROBE = r"""
import json, sys, threading, time, urllib.error, urllib.request
import psycopg
dsn, api = sys.argv[1], sys.argv[2]
said = threading.Lock()
def say(**fields):
    line = json.dumps({"t": time.monotonic(), **fields}) + "\n"
    with said:  # the writers are threads: one whole line at a time (print writes the text and its newline apart)
        sys.stdout.write(line)
        sys.stdout.flush()
def write(n):
    say(sent=n)
    try:
        with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
            conn.execute("INSERT INTO cut_probe (n) VALUES (%s)", (n,))
        say(acked=n)
    except psycopg.Error as err:
        say(refused=n, error=(str(err).splitlines() or [type(err).__name__])[0][:100])
n = 0
while True:
    n += 1
    threading.Thread(target=write, args=(n,), daemon=True).start()
    try:
        body = urllib.request.urlopen(api + "/patroni", timeout=1).read()
    except urllib.error.HTTPError as err:
        body = err.read()
    except OSError:
        body = b"{}"
    status = json.loads(body or b"{}")
    say(role=status.get("role", "?"), state=status.get("state", "?"))
    time.sleep(1)
"""


async def test_the_postgres_primary_s_host_cut_off_during_a_sale_then_back(hosts):
    """The db host of the Patroni primary loses its cable for at least 40 s (until an order is paid on the new
    primary), then gets it back. Cut off, the primary reaches neither Consul nor the other members, so Patroni
    demotes it; before that, strict synchronous replication keeps it from acknowledging any commit, since no
    standby reaches it. The synchronous standby is promoted, the sale goes on, nothing acknowledged is lost, and
    once its host is back the old primary rejoins as a standby by itself (pg_rewind)."""
    cut_seconds = 40
    cluster = hosts.cluster
    three_voters(hosts)
    cluster.wait_healthy(120)
    old = cluster.primary()
    assert old is not None
    timeline = cluster.status(old)["timeline"]
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS cut_probe (n int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        conn.execute("TRUNCATE cut_probe")
    restock(hosts, 100_000)
    sale = Sale(hosts)
    times: dict[str, float] = {}
    new: list = []
    probe_argv = [sys.executable, "-c", PROBE, cluster.member_dsn(old, "postgres"), old.api_url]
    probe = Proc(ProcessSpec(f"probe@{old.name}", hosts.network[old.name].command(probe_argv), dict(os.environ)),
                 hosts.log_dir)

    def promoted() -> bool:
        member = cluster.primary()
        if member is not None and member != old:
            new.append(member)
            return True
        return False

    def rejoined() -> bool:
        """Every member healthy, the old primary a standby on the new timeline."""
        state = cluster.cluster_state()
        if not state or not cluster.healthy():
            return False
        by_name = {m["name"]: m for m in state["members"]}
        it = by_name.get(old.name, {})
        return it.get("role") in ("replica", "sync_standby") and it.get("timeline", 0) > timeline

    async def faults():
        await asyncio.sleep(2)  # the probe's first writes, acknowledged before the cut
        hosts.network.cut(old.name)
        times["cut"] = time.monotonic()
        await asyncio.to_thread(wait_until, promoted, 120, 0.5, "a standby promoted")
        times["promoted"] = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: sale.first("pay", times["promoted"]), 120, 0.5,
                                "an order paid on the new primary")
        times["sold"] = time.monotonic()
        await asyncio.sleep(max(0.0, cut_seconds - (time.monotonic() - times["cut"])))
        hosts.network.restore(old.name)
        times["restored"] = time.monotonic()
        probe.stop(10)
        await asyncio.to_thread(wait_until, rejoined, 240, 0.5, f"{old.name} a standby again, every member healthy")
        times["healthy"] = time.monotonic()
        await asyncio.sleep(5)

    try:
        await sale.run(faults)
    finally:
        probe.stop(10)
    cut = times["cut"]
    events = [json.loads(line) for line in probe.log().splitlines() if line.startswith("{")]
    sent = {e["sent"]: e["t"] for e in events if "sent" in e}
    acked = {e["acked"]: e["t"] for e in events if "acked" in e}
    refused = collections.Counter(e["error"] for e in events if "refused" in e and e["t"] >= cut)
    # When its Patroni began the demotion: it stops its Postgres ("stopping": a fast shutdown, which waits for the
    # walsenders until wal_sender_timeout, since no standby reaches it), then starts it read-only. "?": its REST API
    # did not answer in time, which says nothing.
    demoted = min((e["t"] for e in events if "role" in e and e["t"] >= cut and "?" not in (e["role"], e["state"])
                   and (e["role"] not in ("primary", "master") or e["state"] != "running")), default=None)
    roles = [(round(e["t"] - cut, 1), e["role"], e["state"]) for e in events if "role" in e]
    changes = [r for i, r in enumerate(roles) if i == 0 or r[1:] != roles[i - 1][1:]]
    with psycopg.connect(cluster.dsn("postgres")) as conn:
        kept = {n for n, in conn.execute("SELECT n FROM cut_probe").fetchall()}
    lost = sorted(set(acked) - kept)
    acked_after_cut = sorted(n for n in acked if sent[n] >= cut + 1)
    pays = sorted(t for t, step, status in sale.answers if step == "pay" and status == 200)
    without_writes = max((b - a for a, b in zip(pays, pays[1:]) if b >= cut), default=0.0)
    failed = collections.Counter(status for _, _, status in sale.failures())
    counts = collections.Counter(status for _, _, status in sale.answers)
    state = cluster.cluster_state() or {}
    print(f"\nPostgres primary {old.name} (timeline {timeline}) cut off for {times['restored'] - cut:.0f} s under "
          f"load: {len(sale.answers)} requests, {dict(counts)}; {sum(failed.values())} failed {dict(failed)}; "
          f"{without_writes:.1f} s without a paid order; {old.name}'s Patroni began demoting it "
          f"{'-' if demoted is None else f'{demoted - cut:.1f}'} s after the cut; {new[0].name} promoted "
          f"{times['promoted'] - cut:.1f} s after the cut, first order paid on it "
          f"{times['sold'] - times['promoted']:.1f} s later; every member healthy, {old.name} a standby, "
          f"{times['healthy'] - times['restored']:.1f} s after its cable was back; members now "
          f"{[(m['name'], m['role'], m['state'], m.get('timeline')) for m in state.get('members', [])]}")
    print(f"   the writer on {old.name}: {len(sent)} writes, {len(acked)} acknowledged "
          f"({len(acked_after_cut)} of those sent 1 s or more after the cut), {len(kept)} kept, "
          f"{len(sent) - len(acked) - sum(1 for e in events if 'refused' in e)} never answered; refused after the "
          f"cut: {dict(refused)}; its Patroni said (s after the cut, role, state): {changes}")
    for (t_sent, _, _, _), line in list(zip(sale.unexpected, sale.details))[:15]:
        print(f"   sent {t_sent - cut:.1f} s after the cut: {line[:200]}")
    assert new and new[0] != old
    assert acked, "the writer had no write acknowledged before the cut"
    assert not acked_after_cut, f"the cut-off primary acknowledged writes no standby had: {acked_after_cut}"
    assert not lost, f"acknowledged writes lost: {lost}"
    assert demoted is not None and demoted < times["restored"], f"{old.name} was not demoted while cut off"
    assert not sale.failures_sent(since=times["healthy"]), sale.details[-10:]
    assert paid_orders_kept(sale, hosts.dsn) > 0
    settled_and_clean(hosts)
