"""The suite on a Patroni cluster of three members (devstack.patroni): Consul knows the members and their roles,
commits wait for a synchronous standby, and a purchase goes through the gateway as on one server."""

from __future__ import annotations

import json

import psycopg
import pytest

from devstack.stack import http_get
from tests.e2e.replicated import cluster_suite
from tests.e2e.sale import Sale, paid_orders_kept, restock, settled_and_clean

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def on_cluster(tmp_path_factory, tls_dir):
    with cluster_suite(tmp_path_factory.mktemp("cluster"), tls_dir, replicas=1,
                       env=dict(CONSUL_CHECK_INTERVAL="1s", CATALOG_CACHE_SECONDS="0")) as suite:
        yield suite


def test_consul_lists_the_members_as_service_postgres_with_their_roles(on_cluster):
    status, body = http_get(f"http://{on_cluster.ports.consul_addr}/v1/health/service/postgres?passing=true")
    assert status == 200
    entries = json.loads(body)
    tags = sorted(tuple(sorted(e["Service"]["Tags"])) for e in entries)
    assert len(entries) == 3
    assert sum("primary" in t for t in tags) == 1 and sum("replica" in t for t in tags) == 2, tags
    primary = next(e["Service"] for e in entries if "primary" in e["Service"]["Tags"])
    assert on_cluster.cluster.primary().pg_port == primary["Port"]


def test_the_primary_replicates_synchronously_and_the_dsn_reaches_only_it(on_cluster):
    with psycopg.connect(on_cluster.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        sync = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()
        names = conn.execute("SHOW synchronous_standby_names").fetchone()
    assert sync == (1,) and names[0], names


async def test_a_sale_on_the_cluster_is_exact(on_cluster):
    restock(on_cluster, 10_000)
    sale = Sale(on_cluster)

    async def nothing():
        import asyncio
        await asyncio.sleep(5)

    await sale.run(nothing)
    assert sale.failures() == [], sale.details
    assert sale.first("pay", 0) is not None
    settled_and_clean(on_cluster)
    assert paid_orders_kept(sale, on_cluster.dsn) > 0
