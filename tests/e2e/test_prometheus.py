"""Prometheus finds the whole suite through Consul (monitoring.targets): every replica of every service, Envoy and the
gateway's sync are targets and up; a replica started during the run becomes one, and one killed is marked down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from devstack.prometheus import SCRAPE_INTERVAL
from devstack.procs import wait_until
from devstack.stack import SERVICE_MODULES, Ports, http_get, service_process
from tests.e2e.replicated import monitored_suite

pytestmark = pytest.mark.e2e

REPLICAS = 2
SCRAPE_SECONDS = float(SCRAPE_INTERVAL.removesuffix("s"))
ENV = {"CONSUL_CHECK_INTERVAL": "1s"}


@pytest.fixture(scope="module")
def suite(pg_admin_dsn, tmp_path_factory, tls_dir):
    """Two replicas of every service behind Envoy, with Prometheus and its target sync."""
    run_dir = tmp_path_factory.mktemp("prometheus")
    with monitored_suite(pg_admin_dsn, run_dir, tls_dir, replicas=REPLICAS, env=ENV) as (ports, dsn):
        yield ports, dsn, tls_dir, run_dir


def api(ports: Ports, path: str, **params: str) -> dict:
    """An answer of Prometheus's HTTP API."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    status, body = http_get(f"http://127.0.0.1:{ports.prometheus}/api/v1/{path}{query}", timeout=5)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


def targets(ports: Ports) -> dict[str, dict]:
    """Prometheus's active targets of the Consul job, by their instance label."""
    return {t["labels"]["instance"]: t for t in api(ports, "targets", state="active")["activeTargets"]
            if t["scrapePool"] == "consul-services"}


def up(ports: Ports, instance: str) -> float | None:
    """The last `up` of `instance`; None while Prometheus has none."""
    result = api(ports, "query", query=f'up{{instance="{instance}"}}')["result"]
    return float(result[0]["value"][1]) if result else None


def consul_ids(ports: Ports, service: str) -> set[str]:
    """The ids of every instance Consul has of `service`, passing or not."""
    status, body = http_get(f"http://{ports.consul_addr}/v1/health/service/{service}")
    return {e["Service"]["ID"] for e in json.loads(body)} if status == 200 else set()


def test_every_replica_envoy_the_sync_and_the_audit_are_targets_and_up(suite):
    ports, *_ = suite
    expected = {s: REPLICAS for s in SERVICE_MODULES} | {"envoy": 1, "gateway-sync": 1, "audit": 1}

    def all_up() -> dict[str, dict] | None:
        found = targets(ports)
        by_job: dict[str, list[dict]] = {}
        for t in found.values():
            by_job.setdefault(t["labels"]["job"], []).append(t)
        ok = all(len(by_job.get(job, [])) == count and all(t["health"] == "up" for t in by_job[job])
                 for job, count in expected.items())
        return found if ok else None

    started = time.monotonic()
    found = wait_until(all_up, 60, interval=0.5, what=f"{expected} targets up in Prometheus")
    print(f"\n  every target up {time.monotonic() - started:.1f}s after the suite was ready: "
          f"{sorted((t['labels']['job'], t['scrapeUrl']) for t in found.values())}")
    # The instance label is the Consul service id: each replica reads as itself.
    for job in expected:
        assert {i for i, t in found.items() if t["labels"]["job"] == job} == consul_ids(ports, job)
    envoy = next(t for t in found.values() if t["labels"]["job"] == "envoy")
    assert envoy["scrapeUrl"] == f"http://127.0.0.1:{ports.envoy_admin}/stats/prometheus"
    assert all(t["labels"]["node"] for t in found.values())
    # And what Prometheus scraped is theirs: the services' RPC metrics, Envoy's own, the sync's writes.
    for query in ('count(up{job=~"catalog|cart|inventory|order"} == 1)', 'count(envoy_server_live == 1)',
                  'sum(shop_gateway_sync_writes_total) > 0'):
        assert wait_until(lambda: api(ports, "query", query=query)["result"], 30, interval=0.5, what=query)
    result = api(ports, "query", query='up{job=~"catalog|cart|inventory|order"}')["result"]
    assert len(result) == REPLICAS * len(SERVICE_MODULES) and {r["value"][1] for r in result} == {"1"}


def test_a_replica_started_during_the_run_is_scraped_and_one_killed_is_marked_down(suite):
    ports, dsn, tls_dir, _ = suite
    spec = service_process("catalog", ports, dsn, port=0, tls_dir=tls_dir, **ENV)
    proc = subprocess.Popen(spec.argv, env=spec.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        instance = f"catalog-{socket.gethostname()}-{proc.pid}"
        started = time.monotonic()
        wait_until(lambda: instance in consul_ids(ports, "catalog"), 60, what=f"{instance} registered in Consul")
        registered = time.monotonic()
        wait_until(lambda: up(ports, instance) == 1.0, 6 * SCRAPE_SECONDS, interval=0.25,
                   what=f"{instance} up in Prometheus")
        print(f"\n  new replica {instance}: in Consul {registered - started:.1f}s after its start, up == 1 in"
              f" Prometheus {time.monotonic() - registered:.1f}s after its registration"
              f" (scrape interval {SCRAPE_INTERVAL})")

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed = time.monotonic()
        wait_until(lambda: up(ports, instance) == 0.0, 6 * SCRAPE_SECONDS, interval=0.25,
                   what=f"{instance} down in Prometheus")
        print(f"  killed (SIGKILL): up == 0 after {time.monotonic() - killed:.1f}s;"
              f" still a target while Consul holds it: {instance in targets(ports)}")
        assert instance in consul_ids(ports, "catalog"), "Consul still holds it (reaped after a minute critical)"
        assert targets(ports)[instance]["health"] == "down"
        # The other replicas are untouched.
        assert all(up(ports, i) == 1.0 for i in consul_ids(ports, "catalog") - {instance})
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_registration_consul_lost_comes_back_with_the_same_metrics_port(suite):
    ports, *_ = suite
    entry = json.loads(http_get(f"http://{ports.consul_addr}/v1/health/service/cart")[1])[0]["Service"]
    assert "metrics" in entry["Tags"] and entry["Meta"]["metrics_port"].isdigit()
    req = urllib.request.Request(f"http://{ports.consul_addr}/v1/agent/service/deregister/{entry['ID']}",
                                 method="PUT")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    lost = time.monotonic()

    def back() -> dict | None:
        found = [e["Service"] for e in json.loads(http_get(f"http://{ports.consul_addr}/v1/health/service/cart")[1])
                 if e["Service"]["ID"] == entry["ID"]]
        return found[0] if found else None

    again = wait_until(back, 30, interval=0.25, what=f"{entry['ID']} registered again")
    print(f"\n  {entry['ID']} registered again {time.monotonic() - lost:.1f}s after Consul lost it,"
          f" metrics_port {again['Meta']['metrics_port']}")
    assert (again["Tags"], again["Meta"]) == (entry["Tags"], entry["Meta"])
    wait_until(lambda: targets(ports).get(entry["ID"], {}).get("health") == "up", 6 * SCRAPE_SECONDS,
               interval=0.5, what=f"{entry['ID']} a target again")


def test_prometheus_own_pages_show_the_targets_and_the_alerts(suite):
    """What an operator opens besides the board: Prometheus's pages of targets and alerts (Debian's web files, from
    `make prometheus`), with their scripts, since Debian's binary reads those pages from disk."""
    ports, *_ = suite
    base = f"http://127.0.0.1:{ports.prometheus}"
    wait_until(lambda: "gateway-sync" in http_get(f"{base}/classic/targets")[1].decode(), 30,
               what="the targets page listing the suite's jobs")
    status, alerts = http_get(f"{base}/classic/alerts")
    assert status == 200, alerts[:300]
    page = alerts.decode()
    assert "SaleRouteErrors" in page and "SuiteAuditFindings" in page, page[:500]
    scripts = [src.split("?")[0] for src in page.split('src="')[1:] for src in [src.split('"')[0]]]
    assert scripts, "the alerts page loads its scripts"
    for src in scripts:
        assert http_get(f"{base}{src}")[0] == 200, src
