"""The services' Prometheus metrics, served over HTTP on a port of each process's own (METRICS_PORT)."""

from __future__ import annotations

import logging

import time
from typing import Any, Callable

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LOGGER = logging.getLogger(__name__)

# One count per repair a reconciler made, by service and kind (e.g. cart/orphan_cart_hold).
REPAIRS = Counter("shop_reconciler_repairs", "Repairs made by a reconciler, by service and kind",
                  ["service", "kind"])


# Every RPC a service answered: by method (its full gRPC path) and status code; and how long it took.
RPC_CALLS = Counter("shop_rpc_calls", "RPCs answered, by service, method and status code",
                    ["service", "method", "code"])
RPC_SECONDS = Histogram("shop_rpc_seconds", "Time to answer an RPC, by service and method", ["service", "method"],
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

# Inventory's stock changes: holds made, changed and ended, and calls refused, by reason.
HOLD_CALLS = Counter("shop_inventory_calls", "Stock-changing calls decided, by operation and outcome (OK or the"
                     " refusal's reason)", ["operation", "outcome"])
HOLDS_EXPIRED = Counter("shop_inventory_holds_expired", "Holds reclaimed after their expiry")
TRANSACTION_CALLS = Histogram("shop_inventory_transaction_calls", "Calls decided by one stock transaction",
                              buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

# The Postgres pool of this process.
POOL = Gauge("shop_db_pool_connections", "Connections of this process's Postgres pool, by state", ["state"])


class RpcTimer:
    """Counts one RPC of `method` and the time it takes; the children of the metrics are looked up once."""

    def __init__(self, service: str, method: str):
        self._service, self._method = service, method
        self._seconds = RPC_SECONDS.labels(service, method)
        self._calls: dict[grpc.StatusCode, Any] = {}

    def observe(self, started: float, code: grpc.StatusCode) -> None:
        """Records one call that began at `started` (time.perf_counter) and ended with `code`."""
        self._seconds.observe(time.perf_counter() - started)
        counter = self._calls.get(code)
        if counter is None:
            counter = self._calls[code] = RPC_CALLS.labels(self._service, self._method, code.name)
        counter.inc()


def watch_pool(stats: Callable[[], dict[str, int]]) -> None:
    """Reports the pool's size, idle and waiting connections from `stats` (psycopg_pool's get_stats) when scraped."""
    def reader(key: str) -> Callable[[], float]:
        return lambda: stats().get(key, 0)

    for state, key in (("size", "pool_size"), ("idle", "pool_available"), ("waiting", "requests_waiting")):
        POOL.labels(state).set_function(reader(key))


def repaired(service: str, kind: str, message: str, *args: object) -> None:
    """Records one repair of a reconciler: a log line (the message, lazily formatted) and a count."""
    _LOGGER.warning("repair (%s/%s): " + message, service, kind, *args)
    REPAIRS.labels(service, kind).inc()


def serve(port: int | None, host: str = "0.0.0.0") -> int | None:
    """Serves /metrics on `host`:`port` (0: any free port; None: not at all); returns the port it serves on, which the
    instance registers in Consul for Prometheus (shop_runtime.consul.metrics_registration)."""
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_port)
    _LOGGER.info("metrics on %s:%d/metrics", host, bound)
    return bound
