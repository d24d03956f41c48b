"""The audit exporter against real Postgres and Consul: registered in Consul with its metrics port, findings 0 on a
clean database, above 0 within an interval of an invariant broken, failure to run exported, gone from Consul on
SIGTERM."""

from __future__ import annotations

import json
import signal
import time

import psycopg
from psycopg.conninfo import make_conninfo
from prometheus_client.parser import text_string_to_metric_families

from devstack.prepare import migrate_all
from devstack.procs import Proc, wait_until
from devstack.stack import audit_exporter_process, free_port, http_get
from suite_audit.exporter import TAGS

INTERVAL = 1.0


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of every sample the exporter serves; {} while it does not answer."""
    try:
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return {}
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def findings(samples: dict, check: str) -> float | None:
    return samples.get(("suite_audit_findings", (("check", check),)))


def consul_get(consul: str, path: str):
    status, body = http_get(f"http://{consul}{path}")
    assert status == 200, body
    return json.loads(body)


def audit_instances(consul: str) -> list[dict]:
    """Consul's view of service `audit`: each instance with its checks."""
    return consul_get(consul, "/v1/health/service/audit")


def start(ports, dsn: str, log_dir, metrics_port: int) -> Proc:
    return Proc(audit_exporter_process(ports, dsn, interval=INTERVAL, metrics_port=metrics_port), log_dir)


async def test_the_exporter_registers_and_reports_findings_within_an_interval(fresh_dsn, consul, ports, log_dir):
    await migrate_all(fresh_dsn)
    metrics_port = free_port()
    proc = start(ports, fresh_dsn, log_dir, metrics_port)
    try:
        # Clean: every check's findings 0, a successful run, registered and passing in Consul.
        clean = wait_until(lambda: (s := scrape(metrics_port)).get(("suite_audit_last_success_timestamp_seconds", ()))
                           and s, 60, 0.2, "a first successful audit")
        assert {check: findings(clean, check) for check in TAGS} == {check: 0.0 for check in TAGS}
        assert clean[("suite_audit_last_run_failed", ())] == 0
        print(f"\naudit of an empty suite took {clean[('suite_audit_duration_seconds', ())] * 1000:.1f} ms")
        node = wait_until(lambda: [n for n in audit_instances(consul)
                                   if n["Service"]["Meta"].get("metrics_port") == str(metrics_port)
                                   and all(c["Status"] == "passing" for c in n["Checks"])],
                          30, 0.2, "the exporter registered and passing in Consul")[0]
        assert node["Service"]["Tags"] == ["metrics"] and node["Service"]["Port"] == metrics_port
        service_id = node["Service"]["ID"]

        # A charge kept with no payment attempt naming it: money taken for nothing (charge-without-paid-order).
        with psycopg.connect(fresh_dsn) as conn:
            conn.execute("INSERT INTO orders.provider_charges (payment_id, amount, token) VALUES ('pay_x', 1000,"
                         " 'tok_visa')")
        broken_at = time.monotonic()
        found = wait_until(lambda: (findings(s := scrape(metrics_port), "charge-without-paid-order") or 0) > 0 and s,
                           30, 0.05, "the findings gauge to count the broken invariant")
        seen_after = time.monotonic() - broken_at
        print(f"finding exported {seen_after:.2f} s after the invariant broke (interval {INTERVAL} s)")
        assert findings(found, "charge-without-paid-order") == 1
        assert sum(findings(found, check) or 0 for check in TAGS) == 1
        # Within one interval, and a run's own time: the next run after the write saw it.
        assert seen_after < 2 * INTERVAL + 5, seen_after

        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(15) == 0, proc.tail()
        assert service_id not in consul_get(consul, "/v1/agent/services")
    finally:
        proc.stop()


async def test_a_run_that_cannot_reach_the_database_is_exported_as_failed(fresh_dsn, consul, ports, log_dir):
    metrics_port = free_port()
    # A database that does not exist: every run fails to connect.
    proc = start(ports, make_conninfo(fresh_dsn, dbname="no_such_database"), log_dir, metrics_port)
    try:
        failed = wait_until(lambda: (s := scrape(metrics_port)).get(("suite_audit_last_run_failed", ())) and s,
                            30, 0.2, "a failed run")
        assert failed[("suite_audit_last_success_timestamp_seconds", ())] == 0
    finally:
        proc.stop()
