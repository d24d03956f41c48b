"""Repairs are counted and served to Prometheus."""

import urllib.request

from devstack.stack import free_port
from shop_runtime import metrics


def test_a_repair_is_counted_and_served():
    before = metrics.REPAIRS.labels("cart", "test_kind")._value.get()
    metrics.repaired("cart", "test_kind", "did %s", "something")
    assert metrics.REPAIRS.labels("cart", "test_kind")._value.get() == before + 1
    port = free_port()
    metrics.serve(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'shop_reconciler_repairs_total{kind="test_kind",service="cart"}' in body
