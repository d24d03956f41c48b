"""The catalog's campaign routes against real Postgres, Consul and inventory (the services in this process, real
gRPC): a create cut off between catalog and inventory and resent with its key takes effect once; concurrent
creates of one SKU set one quota aside; a kept product page turns LIVE at startsAt by the database's clock; the
stock figures stay whole after every refusal."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import grpc
import psycopg
import pytest
from google.protobuf import json_format

from devstack.demo_data import generate
from devstack.postgres import create_database, dsn_for
from devstack.prepare import prepare
from devstack.procs import start_consul
from shop.catalog.v1 import campaigns_pb2, campaigns_pb2_grpc, catalog_pb2, catalog_pb2_grpc
from shop_runtime import deadlines, faults
from tests.audit import audit_dsn
from tests.integration.purchase_support import reason, running_suite

BEFORE, AFTER = faults.BEFORE, faults.AFTER
# Demo SKUs with stock that no other test of this module uses, one per use (books past those test_cutoffs takes).
_SKUS = iter([p.sku for p in generate() if p.sku.startswith("BO-0") and int(p.sku[3:]) > 180 and p.on_hand >= 20])
ADMIN = [("x-shop-user-id", "admin-int")]
PRICES = {p.sku: p.price for p in generate()}


def fresh_sku() -> str:
    return next(_SKUS)


@pytest.fixture(scope="module")
async def suite(pg_admin_dsn, log_dir):
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    await prepare(dsn)
    ports, consul = start_consul(log_dir)
    try:
        async with running_suite(dsn, ports.consul_addr) as running:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.services['catalog'].app.port}")
            yield running, campaigns_pb2_grpc.CampaignServiceStub(channel), catalog_pb2_grpc.CatalogServiceStub(channel)
            await channel.close()
    finally:
        consul.stop()


@pytest.fixture(autouse=True)
def no_faults_left():
    yield
    faults.clear()


def db_now(dsn: str) -> datetime:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]


def stock(dsn: str, sku: str) -> tuple[int, int, int]:
    """(on_hand, reserved, set_aside) of a SKU, read from inventory's table."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT on_hand, reserved, set_aside FROM inventory.stock WHERE sku = %s", (sku,)).fetchone()
        assert row is not None
        return row


def campaign_rows(dsn: str, sku: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM inventory.campaign_items WHERE sku = %s", (sku,)).fetchone()
        assert row is not None
        return row[0]


def new_campaign(dsn: str, sku: str, price: int, quota: int, *, starts_in: float = 3600,
                 lasts: float = 3600) -> campaigns_pb2.CreateCampaignRequest:
    starts = db_now(dsn) + timedelta(seconds=starts_in)
    request = campaigns_pb2.CreateCampaignRequest(name=f"int {sku}", items=[
        campaigns_pb2.NewCampaignItem(sku=sku, sale_price=price // 2, quota=quota, max_per_user=2)])
    request.starts_at.FromDatetime(starts)
    request.ends_at.FromDatetime(starts + timedelta(seconds=lasts))
    return request


async def price_of(catalog, sku: str) -> int:
    """The product's price, read from the demo data: not through the catalog, whose kept page would then be
    served to the test's next read."""
    return PRICES[sku]


@pytest.mark.parametrize("when", [BEFORE, AFTER])
async def test_a_create_cut_off_and_resent_with_its_key_takes_effect_once(suite, when):
    running, campaigns, catalog = suite
    sku = fresh_sku()
    on_hand, _, _ = stock(running.dsn, sku)
    request = new_campaign(running.dsn, sku, await price_of(catalog, sku), 10)
    md = ADMIN + [("idempotency-key", f"cut-{when}-{sku}")]
    # Every attempt of the catalog's call to inventory is cut: the admin sees the failure.
    rule = faults.cut("catalog", "inventory", "CreateCampaign", when, times=deadlines.ATTEMPTS)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await campaigns.CreateCampaign(request, metadata=md, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and rule.hits == deadlines.ATTEMPTS
    assert stock(running.dsn, sku)[2] == (10 if when == AFTER else 0)
    # The admin sends it again with the same key: one campaign, its quota set aside once.
    first = await campaigns.CreateCampaign(request, metadata=md, timeout=30)
    again = await campaigns.CreateCampaign(request, metadata=md, timeout=30)
    assert first.campaign_id == again.campaign_id and first.status == campaigns_pb2.SCHEDULED
    assert stock(running.dsn, sku) == (on_hand, 0, 10)
    assert campaign_rows(running.dsn, sku) == 1
    # One lost answer, then the catalog's own retry with the key: the admin never notices.
    other = fresh_sku()
    faults.cut("catalog", "inventory", "CreateCampaign", AFTER, times=1)
    await campaigns.CreateCampaign(new_campaign(running.dsn, other, await price_of(catalog, other), 4),
                                   metadata=ADMIN + [("idempotency-key", f"once-{other}")], timeout=30)
    assert stock(running.dsn, other)[2] == 4 and campaign_rows(running.dsn, other) == 1
    assert audit_dsn(running.dsn) == []


async def test_concurrent_creates_of_one_sku_set_one_quota_aside(suite):
    running, campaigns, catalog = suite
    sku = fresh_sku()
    price = await price_of(catalog, sku)
    on_hand, _, _ = stock(running.dsn, sku)

    async def create(n: int):
        try:
            return await campaigns.CreateCampaign(new_campaign(running.dsn, sku, price, 5, starts_in=3600 + n),
                                                  metadata=ADMIN, timeout=30)
        except grpc.aio.AioRpcError as err:
            return err

    answers = await asyncio.gather(*(create(n) for n in range(8)))
    won = [a for a in answers if isinstance(a, campaigns_pb2.AdminCampaign)]
    lost = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(won) == 1 and {reason(e) for e in lost} == {"CAMPAIGN_OVERLAP"}
    assert stock(running.dsn, sku) == (on_hand, 0, 5)
    product = await catalog.GetProduct(catalog_pb2.GetProductRequest(sku=sku), timeout=10)
    assert product.available == on_hand - 5
    assert json_format.MessageToDict(product.campaign)["campaignId"] == won[0].campaign_id
    await campaigns.CancelCampaign(campaigns_pb2.CancelCampaignRequest(campaign_id=won[0].campaign_id),
                                   metadata=ADMIN, timeout=10)
    assert stock(running.dsn, sku) == (on_hand, 0, 0)
    assert audit_dsn(running.dsn) == []


async def test_refusals_change_nothing(suite):
    running, campaigns, catalog = suite
    sku = fresh_sku()
    price = await price_of(catalog, sku)
    before = stock(running.dsn, sku)
    bad_price = new_campaign(running.dsn, sku, price, 1)
    bad_price.items[0].sale_price = price
    too_many = new_campaign(running.dsn, sku, price, before[0] + 1)
    unknown = new_campaign(running.dsn, sku, price, 1)
    unknown.items.add(sku="NO-SUCH-SKU", sale_price=1, quota=1)
    for request, expected in ((bad_price, "INVALID_ARGUMENT"), (too_many, "OUT_OF_STOCK"),
                              (unknown, "PRODUCT_NOT_FOUND")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await campaigns.CreateCampaign(request, metadata=ADMIN, timeout=30)
        assert reason(err.value) == expected
    assert stock(running.dsn, sku) == before and campaign_rows(running.dsn, sku) == 0


async def test_a_kept_product_page_turns_live_at_starts_at_by_the_database_clock(suite):
    running, campaigns, catalog = suite
    sku = fresh_sku()
    created = await campaigns.CreateCampaign(
        new_campaign(running.dsn, sku, await price_of(catalog, sku), 3, starts_in=2.0, lasts=60),
        metadata=ADMIN, timeout=30)
    starts = created.starts_at.ToDatetime(tzinfo=timezone.utc).timestamp()
    # The catalog keeps product pages (CATALOG_CACHE_SECONDS, 1 s by default); read it over and over across the
    # start: never LIVE before startsAt, and LIVE soon after it whatever the kept answer's age.
    flipped = None
    deadline = asyncio.get_running_loop().time() + 10
    while flipped is None and asyncio.get_running_loop().time() < deadline:
        before = db_now(running.dsn).timestamp()
        product = await catalog.GetProduct(catalog_pb2.GetProductRequest(sku=sku), timeout=10)
        after = db_now(running.dsn).timestamp()
        status = json_format.MessageToDict(product.campaign)["status"]
        if status == "LIVE":
            assert after >= starts, "LIVE before startsAt"
            flipped = before
        else:
            assert status == "SCHEDULED" and before < starts + 0.25, "still SCHEDULED well after startsAt"
        await asyncio.sleep(0.05)
    assert flipped is not None and flipped - starts < 0.5
    await campaigns.CancelCampaign(campaigns_pb2.CancelCampaignRequest(campaign_id=created.campaign_id),
                                   metadata=ADMIN, timeout=10)


@pytest.mark.parametrize("method", ["ListCampaigns", "GetAvailability"])
async def test_a_page_fails_whole_when_inventory_answers_neither_campaigns_nor_availability(suite, method):
    running, campaigns, catalog = suite
    sku = fresh_sku()  # never read before: no kept answer
    faults.cut("catalog", "inventory", method, BEFORE, times=deadlines.ATTEMPTS)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await catalog.GetProduct(catalog_pb2.GetProductRequest(sku=sku), timeout=10)
    assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    faults.clear()
    # The failure was not kept: the next read answers, with both.
    product = await catalog.GetProduct(catalog_pb2.GetProductRequest(sku=sku), timeout=10)
    assert product.available == stock(running.dsn, sku)[0] and product.campaign.WhichOneof("kind") == "null_value"
