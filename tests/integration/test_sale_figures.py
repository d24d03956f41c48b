"""The sale board's exporter (inventory_svc/sale_figures.py) against real Postgres: after holds, a sale and refusals,
its figures are the admin API's; hot SKUs come and go with their series; it never waits for a SKU's lock; an add
that commits after a later one is still counted."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from inventory_svc import sale_figures as sf
from inventory_svc.campaigns import Campaigns
from inventory_svc.repository import sku_lock_key
from inventory_svc.service import Inventory as InventoryService
from shop.inventory.v1 import inventory_pb2
from shop_runtime.clock import SystemClock
from shop_runtime.db import open_pool
from tests.integration.test_campaign_inventory import running

SALE = 600


@pytest.fixture
async def shop(fresh_dsn):
    """The inventory server on the database's clock, and a pool of the exporter's own."""
    async with running(fresh_dsn, SystemClock(), pool_size=8) as inventory:
        pool = await open_pool(fresh_dsn, max_size=2)
        try:
            yield inventory, pool
        finally:
            await pool.close()


def exporter(pool, hot: int = 1) -> tuple[sf.SaleFigures, CollectorRegistry]:
    figures = sf.SaleFigures(pool, SystemClock(), sf.SaleFiguresSettings(interval_seconds=5.0, hot_skus=hot))
    registry = CollectorRegistry()
    registry.register(figures)
    return figures, registry


def series(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    """(label values...) -> value of every sample of `name`."""
    return {tuple(sorted(s.labels.items())): s.value
            for family in registry.collect() for s in family.samples if s.name == name}


def one(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


async def add(inv, buyer: str, sku: str, qty: int) -> inventory_pb2.Hold:
    return await inv.add(buyer, sku, qty, price=1000)


async def refused(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code().name


async def test_the_exported_figures_are_the_admin_apis(shop):
    inv, pool = shop
    for sku, units in (("A", 100), ("B", 50), ("C", 20)):
        await inv.stock(sku, units)
    campaign = await inv.campaign([("A", SALE, 10, 2)], starts_in=0, lasts=3600, name="Midnight")
    cid = campaign.campaign_id
    figures, registry = exporter(pool, hot=1)
    await figures.pass_once()  # the first pass reads back the ledger so far: no holds yet

    # A few holds, a sale, refusals (the per-buyer limit, the quota), and regular-stock holds of B and C.
    for buyer, units in (("u1", 2), ("u2", 1), ("u4", 2), ("u5", 2)):
        await add(inv, buyer, "A", units)
    paid = await add(inv, "u3", "A", 2)
    await inv.stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[paid.hold_id]))
    assert await refused(add(inv, "u1", "A", 1)) == "ABORTED"  # PURCHASE_LIMIT: u1 has 2 of 2
    assert await refused(add(inv, "u6", "A", 2)) == "ABORTED"  # SALE_SOLD_OUT: 1 left
    for buyer in ("u7", "u8"):
        await add(inv, buyer, "B", 3)
    await add(inv, "u9", "C", 1)
    started = time.perf_counter()
    await figures.pass_once()
    print(f"\nsale figures: one pass {1000 * (time.perf_counter() - started):.1f} ms, exported "
          f"{one(registry, sf.PASS_SECONDS) * 1000:.1f} ms")

    (view,), _ = await Campaigns(pool, SystemClock()).get([cid])
    (item,) = view.items
    stock_a = await InventoryService(pool, SystemClock()).get_stock("A")
    exported = {name: one(registry, name, campaign=cid, sku="A")
                for name in (sf.QUOTA, sf.REMAINING, sf.HELD, sf.SOLD, sf.RETURNED, sf.BUYERS)}
    print(f"sale figures: exported {exported}, refused {series(registry, sf.REFUSED + '_total')}")
    print(f"sale figures: admin API quota={item.quota} remaining={item.remaining} held={item.held} sold={item.sold} "
          f"refused={item.refused}; stock {stock_a}")
    assert exported == {sf.QUOTA: item.quota, sf.REMAINING: item.remaining, sf.HELD: item.held, sf.SOLD: item.sold,
                        sf.RETURNED: item.returned, sf.BUYERS: item.buyers}
    assert (item.remaining, item.held, item.sold) == (1, 7, 2)
    assert series(registry, sf.REFUSED + "_total") == {
        (("campaign", cid), ("reason", reason), ("sku", "A")): float(n) for reason, n in item.refused.items()}
    assert item.refused == {"PURCHASE_LIMIT": 1, "SALE_SOLD_OUT": 1}
    assert series(registry, sf.CAMPAIGN) == {(("campaign", cid), ("name", "Midnight"), ("status", "LIVE")): 1.0}
    for sku in ("A", "B"):
        row = await InventoryService(pool, SystemClock()).get_stock(sku)
        assert (one(registry, sf.ON_HAND, sku=sku), one(registry, sf.STOCK_HELD, sku=sku),
                one(registry, sf.SET_ASIDE, sku=sku), one(registry, sf.AVAILABLE, sku=sku)) == (
            row.on_hand, row.reserved, row.set_aside, row.available)
    assert (stock_a.on_hand, stock_a.reserved, stock_a.set_aside) == (98, 7, 1)
    # Adds: holds made (refusals make none), their units, and units sold, counted from the ledger.
    assert [one(registry, name + "_total", sku="A") for name in (sf.ADDS, sf.ADDED_UNITS, sf.SOLD_UNITS)] == [5, 9, 2]
    assert [one(registry, name + "_total", sku="B") for name in (sf.ADDS, sf.ADDED_UNITS, sf.SOLD_UNITS)] == [2, 6, 0]
    # A is watched for its campaign; of B (6 units) and C (1), only B is hot with one hot SKU.
    assert series(registry, sf.WATCHED) == {(("sku", "A"), ("why", "campaign")): 1.0,
                                            (("sku", "B"), ("why", "hot")): 1.0}
    assert one(registry, sf.ON_HAND, sku="C") is None

    # C gets hotter than B: B's series go, C's come.
    await add(inv, "u10", "C", 12)
    await figures.pass_once()
    assert series(registry, sf.WATCHED) == {(("sku", "A"), ("why", "campaign")): 1.0,
                                            (("sku", "C"), ("why", "hot")): 1.0}
    assert one(registry, sf.ON_HAND, sku="B") is None and one(registry, sf.ADDS + "_total", sku="B") is None
    assert one(registry, sf.ADDS + "_total", sku="C") == 2 and one(registry, sf.STOCK_HELD, sku="C") == 13

    # The campaign ended (cancelled while live): its item's series go; A (11 units) is not hotter than C (13).
    await inv.stub.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=cid))
    await figures.pass_once()
    assert series(registry, sf.CAMPAIGN) == {} and series(registry, sf.REMAINING) == {}
    assert series(registry, sf.WATCHED) == {(("sku", "C"), ("why", "hot")): 1.0}


async def test_a_campaign_opening_soon_is_watched_before_it_opens(shop):
    inv, pool = shop
    await inv.stock("S", 30)
    soon = await inv.campaign([("S", SALE, 12, 1)], starts_in=120, lasts=600)
    await inv.campaign([("S", SALE, 5, 1)], starts_in=7200, lasts=600)  # hours away: not yet
    figures, registry = exporter(pool)
    await figures.pass_once()
    assert series(registry, sf.CAMPAIGN) == {
        (("campaign", soon.campaign_id), ("name", "Flash"), ("status", "SCHEDULED")): 1.0}
    assert one(registry, sf.REMAINING, campaign=soon.campaign_id, sku="S") == 12


async def test_a_pass_never_waits_for_a_skus_lock(shop, fresh_dsn):
    inv, pool = shop
    await inv.stock("L", 10)
    campaign = await inv.campaign([("L", SALE, 5, 0)], starts_in=0)
    await add(inv, "u1", "L", 1)
    figures, registry = exporter(pool)
    # Another session holds L's advisory lock (as a write in progress would) for the whole pass.
    with psycopg.connect(fresh_dsn, autocommit=True) as locker:
        locker.execute("SELECT pg_advisory_lock(%s)", (sku_lock_key("L"),))
        started = time.perf_counter()
        await asyncio.wait_for(figures.pass_once(), 30)
        print(f"\nsale figures: a pass with L's lock taken elsewhere took {1000 * (time.perf_counter() - started):.1f} ms")
    assert one(registry, sf.HELD, campaign=campaign.campaign_id, sku="L") == 1


async def test_an_add_that_commits_after_a_later_one_is_counted(shop, fresh_dsn):
    inv, pool = shop
    await inv.stock("G", 10)
    figures, registry = exporter(pool)
    await figures.pass_once()
    # A transaction draws a ledger id and stays open while a later add commits with a higher id.
    with psycopg.connect(fresh_dsn) as slow:
        slow.execute("INSERT INTO inventory.ledger (sku, reason, on_hand_delta, reserved_delta, on_hand_after,"
                     " reserved_after, actor, created_at) VALUES ('G', 'HOLD', 0, 1, 10, 1, 'test', now())")
        await add(inv, "u1", "G", 2)
        await figures.pass_once()
        assert one(registry, sf.ADDS + "_total", sku="G") == 1
        slow.commit()
    await figures.pass_once()
    assert (one(registry, sf.ADDS + "_total", sku="G"), one(registry, sf.ADDED_UNITS + "_total", sku="G")) == (2, 3)
    await figures.pass_once()
    assert one(registry, sf.ADDS + "_total", sku="G") == 2  # counted once


async def test_what_a_pass_costs_over_a_busy_ledger_and_beside_adds(shop, fresh_dsn):
    """The cost, printed: a pass over 100,000 ledger rows of 1,000 SKUs (its statements' plans too), and the time of
    adds with passes running back to back beside them and without."""
    inv, pool = shop
    await inv.stock("HOT", 100_000)
    await inv.campaign([("HOT", SALE, 1000, 0)], starts_in=0)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO inventory.stock (sku, on_hand) SELECT 'K' || i, 1000 FROM generate_series(1, 1000) i")
        conn.execute("INSERT INTO inventory.ledger (sku, reason, on_hand_delta, reserved_delta, on_hand_after,"
                     " reserved_after, actor, created_at)"
                     " SELECT 'K' || (i % 1000 + 1), 'HOLD', 0, 1, 1000, 1, 'test', now() FROM generate_series(1, 100000) i")
        conn.execute("ANALYZE inventory.ledger")
        plans = {name: "\n      ".join(r[0] for r in conn.execute("EXPLAIN " + sql, params).fetchall()) for name, sql, params in (
            ("tail's end", sf._TAIL_END, (1000, sf.PAGE)),
            ("tail", sf._TAIL, dict(after=1000, upto=1000 + sf.PAGE, width=5.0, complete=False)),
            ("campaigns", sf._WATCHED_CAMPAIGNS.replace("%(now)s", "now()").replace("%(longest)s", "interval '7 days'")
             .replace("%(soon)s", "900").replace("%(limit)s", "20"), None))}
    figures, registry = exporter(pool, hot=10)
    started = time.perf_counter()
    await figures.pass_once()
    first = time.perf_counter() - started
    started = time.perf_counter()
    await figures.pass_once()
    steady = time.perf_counter() - started
    print(f"\nsale figures: first pass (reads back {sf.BACK_READ} ledger ids) {1000 * first:.1f} ms,"
          f" a pass with nothing new {1000 * steady:.1f} ms; hot: {figures.hot_skus()[:3]}...")
    for name, plan in plans.items():
        print(f"    plan of the {name} read:\n      {plan}")
    assert "ledger_pkey" in plans["tail's end"] and "ledger_pkey" in plans["tail"]
    assert len(series(registry, sf.WATCHED)) == 11

    async def adds(n: int) -> float:
        """The median time of n adds of HOT, one after the other."""
        times = []
        for i in range(n):
            started = time.perf_counter()
            await inv.add(f"cost-{uuid.uuid4().hex[:8]}", "HOT", 1, price=1000)
            times.append(time.perf_counter() - started)
        return sorted(times)[n // 2]

    alone = await adds(100)
    stop = asyncio.Event()

    async def passes() -> int:
        count = 0
        while not stop.is_set():
            await figures.pass_once()
            count += 1
        return count

    running_passes = asyncio.create_task(passes())
    beside = await adds(100)
    stop.set()
    count = await running_passes
    print(f"sale figures: median add {1000 * alone:.2f} ms alone, {1000 * beside:.2f} ms beside {count} passes run"
          f" back to back (the exporter runs one every 5 s)")
