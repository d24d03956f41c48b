"""Each Patroni member's metrics in Prometheus form, found through Consul as a scraper finds them: role, timeline,
and the replication lag in bytes that the recording rule of docs/operations.md derives from the xlog gauges."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.patroni_support import running_cluster

pytestmark = pytest.mark.integration


def _gauges(address: str, port: int) -> dict[str, float]:
    """A member's /metrics as {metric name: value} (each Patroni member reports itself alone). By the families'
    names: the parser names a counter's sample `<name>_total`, where Prometheus keeps Patroni's name."""
    with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {family.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def _targets(consul_addr: str, timeout: float = 60.0) -> list[dict]:
    """The Patroni REST APIs registered in Consul with tag `metrics`, once every member's is passing."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://{consul_addr}/v1/health/service/postgres-api?passing=true&tag=metrics",
                                    timeout=5) as resp:
            entries = [e["Service"] for e in json.loads(resp.read())]
        if len(entries) == 3 or time.monotonic() > deadline:
            return entries
        time.sleep(0.5)


def _lag(samples: dict[str, dict[str, float]]) -> dict[str, float]:
    """The recording rule, evaluated on one round of scrapes: each replica's lag in bytes is the primary's
    patroni_xlog_location minus its patroni_xlog_replayed_location."""
    primary = max(s["patroni_xlog_location"] for s in samples.values())
    return {name: primary - s["patroni_xlog_replayed_location"] for name, s in samples.items()
            if s["patroni_replica"] == 1}


@pytest.fixture(scope="module")
def data_tier(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("patroni-metrics"), 3, "metrics") as tier:
        yield tier.cluster, tier.dsn, tier.ports


def test_every_member_reports_its_role_and_timeline_to_a_scraper_that_finds_it_in_consul(data_tier):
    cluster, _dsn, ports = data_tier
    targets = _targets(ports.consul_addr)
    assert sorted(t["Meta"]["member"] for t in targets) == sorted(m.name for m in cluster.members), targets
    roles = {}
    for target in targets:
        gauges = _gauges(target["Address"], target["Port"])
        member = next(m for m in cluster.members if m.name == target["Meta"]["member"])
        status = cluster.status(member)
        assert status is not None and target["Port"] == member.api_port
        roles[member.name] = {k: int(gauges[k]) for k in ("patroni_primary", "patroni_replica", "patroni_sync_standby")}
        print(f"{member.name}: Patroni says {status['role']} on timeline {status['timeline']}; metrics {roles[member.name]}"
              f", timeline {gauges['patroni_postgres_timeline']:.0f}")
        assert gauges["patroni_postgres_timeline"] == status["timeline"]
        assert gauges["patroni_primary"] == (status["role"] == "primary")
        assert gauges["patroni_replica"] == (status["role"] == "replica")
    assert sum(r["patroni_primary"] for r in roles.values()) == 1
    assert sum(r["patroni_replica"] for r in roles.values()) == 2
    assert sum(r["patroni_sync_standby"] for r in roles.values()) == 1
    state = cluster.cluster_state()
    assert state is not None
    sync = [m["name"] for m in state["members"] if m["role"] == "sync_standby"]
    assert [n for n, r in roles.items() if r["patroni_sync_standby"]] == sync, state


def test_the_lag_of_every_replica_goes_back_to_zero_after_a_write_burst(data_tier):
    cluster, dsn, ports = data_tier
    targets = _targets(ports.consul_addr)

    def scrape() -> dict[str, dict[str, float]]:
        return {t["Meta"]["member"]: _gauges(t["Address"], t["Port"]) for t in targets}

    before = scrape()
    seen: list[dict[str, float]] = []

    def burst() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS lag_burst (id bigserial PRIMARY KEY, pad text)")
            for _ in range(5):
                conn.execute("INSERT INTO lag_burst (pad) SELECT repeat('x', 200) FROM generate_series(1, 50000)")

    # Scraped all along the burst, as Prometheus would, then until every replica has caught up.
    writer = threading.Thread(target=burst)
    writer.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lag = _lag(scrape())
            seen.append(lag)
            if not writer.is_alive() and len(lag) == 2 and all(v == 0 for v in lag.values()):
                break
            time.sleep(0.2)
    finally:
        writer.join()
    primary = max(s["patroni_xlog_location"] for s in scrape().values())
    grew = primary - max(s["patroni_xlog_location"] for s in before.values())
    print(f"burst: WAL grew {grew / 1e6:.1f} MB; lag rounds {len(seen)}, "
          f"largest seen {max((max(v.values(), default=0) for v in seen), default=0) / 1e6:.2f} MB, last {seen[-1]}")
    assert grew > 10e6  # the burst did write
    assert any(v > 0 for lag in seen for v in lag.values()), "the lag never showed the burst"
    assert seen and len(seen[-1]) == 2 and all(v == 0 for v in seen[-1].values()), seen[-5:]
    with psycopg.connect(dsn, autocommit=True) as conn:
        replay = conn.execute("SELECT application_name, pg_current_wal_flush_lsn() - replay_lsn "
                              "FROM pg_stat_replication").fetchall()
    print(f"pg_stat_replication on the primary: {replay}")
    assert len(replay) == 2 and all(v == 0 for _name, v in replay)
