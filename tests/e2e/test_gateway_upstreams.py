"""Envoy's upstreams follow Consul: a replica that starts is used, one that stops is dropped, with no restart of Envoy."""

import signal
import threading

from devstack.stack import envoy_hosts, free_port, service_process
from devstack.procs import Proc, wait_until


def catalog_hosts(suite) -> set[int]:
    return {port for _, port in envoy_hosts(suite.ports.envoy_admin, "catalog")}


def test_a_new_replica_is_picked_up_and_a_stopped_one_dropped_without_failed_requests(suite, http, log_dir):
    original = catalog_hosts(suite)
    assert original == {suite.ports.services["catalog"]}
    port = free_port()
    replica = Proc(service_process("catalog", suite.ports, suite.dsn, port=port, name="catalog-replica",
                                   tls_dir=suite.tls_dir), log_dir)
    failures: list[str] = []
    stop = threading.Event()

    def shop():
        # A storefront browsing all along; every answer must be a 200.
        while not stop.is_set():
            resp = http.get("/catalogs", params={"limit": 5, "category": "toys"})
            if resp.status_code != 200:
                failures.append(f"{resp.status_code} {resp.text}")

    browser = threading.Thread(target=shop)
    browser.start()
    try:
        wait_until(lambda: catalog_hosts(suite) == original | {port}, 30, what="envoy picking up the replica")
        replica.signal(signal.SIGTERM)
        assert replica.popen.wait(20) == 0
        wait_until(lambda: catalog_hosts(suite) == original, 30, what="envoy dropping the replica")
    finally:
        stop.set()
        browser.join()
        replica.stop()
    assert failures == []
