"""The services' Prometheus metrics, served over HTTP when METRICS_PORT is set."""

from __future__ import annotations

import logging

from prometheus_client import Counter, start_http_server

_LOGGER = logging.getLogger(__name__)

# One count per repair a reconciler made, by service and kind (e.g. cart/orphan_cart_hold).
REPAIRS = Counter("shop_reconciler_repairs", "Repairs made by a reconciler, by service and kind",
                  ["service", "kind"])


def repaired(service: str, kind: str, message: str, *args) -> None:
    """Records one repair of a reconciler: a log line (the message, lazily formatted) and a count."""
    _LOGGER.warning("repair (%s/%s): " + message, service, kind, *args)
    REPAIRS.labels(service, kind).inc()


def serve(port: int) -> None:
    """Serves /metrics on `port` (0: not at all)."""
    if port:
        start_http_server(port)
        _LOGGER.info("metrics on :%d/metrics", port)
