"""Envoy in front of replicas, on its own: a replica that dies costs no request (the gateway retries what never
reached a service on another instance) and is marked down by Envoy's own gRPC health check."""

from __future__ import annotations

import dataclasses
import signal

import httpx
import pytest

from devstack.procs import Proc, wait_until
from devstack.stack import envoy_hosts, free_port, gateway_processes, passing_instances, service_process
from gateway.clusters import write_eds

pytestmark = pytest.mark.e2e


def catalog_hosts(admin: int) -> dict[int, list[str]]:
    """The catalog cluster's hosts in Envoy: port -> health flags (none while Envoy is not listening yet)."""
    try:
        return {port: flags for (_, port), flags in envoy_hosts(admin, "catalog").items()}
    except OSError:
        return {}


def test_a_replica_that_dies_costs_no_request_and_is_marked_down(suite, log_dir, tmp_path):
    ports = dataclasses.replace(suite.ports, gateway=free_port(), envoy_admin=free_port())
    # Its endpoints are set by hand below.
    envoy, _sync = gateway_processes(ports, tmp_path, suite.secrets, tls_dir=suite.tls_dir)
    live = passing_instances(suite.ports, "catalog")[0]["Service"]["Port"]
    doomed_port = free_port()
    doomed = Proc(service_process("catalog", suite.ports, suite.dsn, port=doomed_port, name="catalog-doomed",
                                  tls_dir=suite.tls_dir,
                                  CATALOG_CACHE_SECONDS="0"), log_dir)
    write_eds(tmp_path / "eds", "catalog", [("127.0.0.1", live), ("127.0.0.1", doomed_port)])
    proc = Proc(envoy, log_dir)
    base = f"http://127.0.0.1:{ports.gateway}"
    try:
        wait_until(lambda: catalog_hosts(ports.envoy_admin) == {live: [], doomed_port: []}, 30,
                   what="both replicas healthy in Envoy")
        doomed.signal(signal.SIGKILL)
        doomed.popen.wait(10)
        with httpx.Client(base_url=base, timeout=10) as client:
            statuses = [client.get("/catalogs", params={"limit": 2}).status_code for _ in range(40)]
        assert statuses == [200] * 40, statuses
        flags = wait_until(lambda: (f := catalog_hosts(ports.envoy_admin)) and f[doomed_port] and f, 15,
                           what="the dead replica marked down")
        assert "failed_active_health_check" in flags[doomed_port], flags
        assert flags[live] == [], flags
    finally:
        proc.stop()
        doomed.stop()
