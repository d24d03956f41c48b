"""Flash-sale campaigns inside inventory, against real Postgres: quotas set aside under the SKUs' locks, bought from
while live, given back at the instant a campaign ends, decided by the database's clock, and proven by the audit.

The real inventory gRPC server runs in the test's own event loop on a fresh database. Tests that move time use a
manual clock (tests/clock.py) that every statement takes as now; the tests of the opening instant and of the
crowds run on the database's own clock, with real concurrent calls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from inventory_svc.server import SPEC, InventorySettings, create_server
from inventory_svc.service import Inventory as InventoryService
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime.clock import SystemClock
from shop_runtime.config import ServiceSettings
from shop_runtime.db import migrate, open_pool
from shop_runtime.errors import error_info
from shop_runtime.server import Deps
from tests.clock import ManualClock
from tests.integration.inventory_support import audit_of, stored

ADMIN = [("x-shop-user-id", "ops")]
PRICE, SALE = 1000, 600


class Inventory:
    """A stub of the real server, its database and its clock."""

    def __init__(self, stub, dsn: str, clock, service: InventoryService):
        self.stub = stub
        self.dsn = dsn
        self.clock = clock
        # The service layer on the same pool and clock, for the sweeper (a second replica's).
        self.service = service

    async def db_now(self) -> datetime:
        if isinstance(self.clock, ManualClock):
            return self.clock.now()
        return stored(self.dsn, "SELECT clock_timestamp()")[0][0]

    async def stock(self, sku: str, on_hand: int) -> None:
        await self.stub.SetStock(inventory_pb2.SetStockRequest(sku=sku, on_hand=on_hand), metadata=ADMIN)

    async def campaign(self, items: list[tuple[str, int, int, int]], *, starts_in: float = 0, lasts: float = 3600,
                       key: str = "", name: str = "Flash") -> inventory_pb2.Campaign:
        """A campaign of (sku, sale price, quota, max per user) starting `starts_in` seconds from now."""
        now = await self.db_now()
        return await self.stub.CreateCampaign(new_campaign(items, now + timedelta(seconds=starts_in),
                                                           now + timedelta(seconds=starts_in + lasts), key, name),
                                              metadata=ADMIN)

    async def level(self, sku: str) -> inventory_pb2.StockLevel:
        return (await self.stub.GetAvailability(inventory_pb2.GetAvailabilityRequest(skus=[sku]))).items[0]

    async def figures(self, campaign_id: str) -> inventory_pb2.Campaign:
        (campaign,) = (await self.stub.GetCampaigns(inventory_pb2.GetCampaignsRequest(campaign_ids=[campaign_id]))
                       ).campaigns
        return campaign

    async def add(self, buyer: str, sku: str, qty: int = 1, *, expected: int = 0, limit: int = 0, ttl: int = 600,
                  price: int = PRICE) -> inventory_pb2.Hold:
        (hold,) = (await self.stub.CreateHolds(inventory_pb2.CreateHoldsRequest(
            owner=f"cart:{buyer}", buyer=buyer, ttl_seconds=ttl, max_units_per_buyer=limit,
            lines=[inventory_pb2.HoldLine(sku=sku, qty=qty, price=price, expected_price=expected)]))).holds
        return hold


def new_campaign(items, starts_at: datetime, ends_at: datetime, key: str = "",
                 name: str = "Flash") -> inventory_pb2.CreateCampaignRequest:
    request = inventory_pb2.CreateCampaignRequest(
        name=name, idempotency_key=key,
        items=[inventory_pb2.NewCampaignItem(sku=s, sale_price=p, quota=q, max_per_user=m) for s, p, q, m in items])
    request.starts_at.FromDatetime(starts_at)
    request.ends_at.FromDatetime(ends_at)
    return request


@contextlib.asynccontextmanager
async def running(dsn: str, clock, pool_size: int = 8):
    await migrate(dsn, SPEC.schema, SPEC.migrations)
    pool = await open_pool(dsn, max_size=pool_size)
    settings = ServiceSettings(service_name="inventory", database_url=dsn, grpc_host="127.0.0.1", grpc_port=0,
                               advertise_address="127.0.0.1", consul_host="127.0.0.1", consul_port=1,
                               shutdown_grace_seconds=1, check_interval="1s", pool_max_size=pool_size)
    app = create_server(settings, Deps(pool=pool, clock=clock), InventorySettings(0))
    await app.server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield Inventory(inventory_pb2_grpc.InventoryServiceStub(channel), dsn, clock, InventoryService(pool, clock))
    finally:
        await channel.close()
        await app.server.stop(0)
        await pool.close()


@pytest.fixture
async def inv(fresh_dsn):
    """The server on a manual clock."""
    async with running(fresh_dsn, ManualClock()) as inventory:
        yield inventory


@pytest.fixture
async def live_inv(fresh_dsn):
    """The server on the database's own clock."""
    async with running(fresh_dsn, SystemClock(), pool_size=12) as inventory:
        yield inventory


async def refusal(call) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    info = error_info(caught.value)
    return caught.value.code(), info.reason if info else "", dict(info.metadata) if info else {}


def figures(item: inventory_pb2.CampaignItem) -> dict[str, int]:
    return {k: getattr(item, k) for k in ("quota", "held", "sold", "remaining", "returned", "revenue", "buyers")}


# --- creating, cancelling, reading ---------------------------------------------------------------------


async def test_a_campaign_sets_its_quota_aside_from_regular_stock(inv):
    await inv.stock("A", 100)
    await inv.stock("B", 10)
    campaign = await inv.campaign([("A", SALE, 30, 2), ("B", 50, 10, 0)], starts_in=60)
    assert campaign.status == inventory_pb2.SCHEDULED
    assert campaign.created_by == "ops" and not campaign.HasField("cancelled_at")
    assert [(i.sku, i.quota, i.remaining, i.max_per_user) for i in campaign.items] == [("A", 30, 30, 2),
                                                                                      ("B", 10, 10, 0)]
    level = await inv.level("A")
    assert (level.on_hand, level.reserved, level.set_aside, level.available) == (100, 0, 30, 70)
    assert (await inv.level("B")).available == 0
    stock = await inv.stub.GetStock(inventory_pb2.GetStockRequest(sku="A"))
    assert (stock.set_aside, stock.available) == (30, 70)
    # Before it starts, the SKU sells at its regular price from regular stock only.
    hold = await inv.add("u1", "A", 5)
    assert (hold.price, hold.campaign_id) == (PRICE, "")
    assert await refusal(inv.add("u2", "B", 1)) == (grpc.StatusCode.ABORTED, "OUT_OF_STOCK",
                                                    {"sku": "B", "available": "0", "skus": "B"})
    # On hand cannot go below what is held and set aside.
    code, reason, meta = await refusal(inv.stub.SetStock(inventory_pb2.SetStockRequest(sku="A", on_hand=34),
                                                         metadata=ADMIN))
    assert (reason, meta["reserved"], meta["setAside"]) == ("BELOW_RESERVED", "5", "30")
    await inv.stub.SetStock(inventory_pb2.SetStockRequest(sku="A", on_hand=35), metadata=ADMIN)
    assert stored(inv.dsn, "SELECT reason, set_aside_delta, set_aside_after, campaign_id::text FROM inventory.ledger"
                           " WHERE reason = 'SET_ASIDE' ORDER BY sku") == [
        ("SET_ASIDE", 30, 30, campaign.campaign_id), ("SET_ASIDE", 10, 10, campaign.campaign_id)]
    assert await audit_of(inv.dsn) == []


async def test_overlap_out_of_stock_and_unknown_skus_are_refused_whole(inv):
    await inv.stock("A", 100)
    await inv.stock("B", 5)
    first = await inv.campaign([("A", SALE, 10, 0)], starts_in=3600, lasts=3600)
    # [now+1h, now+2h) is taken for A: one starting inside it, or ending inside it, overlaps.
    for starts_in, lasts in ((1800, 3600), (5400, 600), (3000, 7200)):
        code, reason, meta = await refusal(inv.campaign([("B", 10, 1, 0), ("A", SALE, 1, 0)],
                                                        starts_in=starts_in, lasts=lasts))
        assert (code, reason, meta) == (grpc.StatusCode.ABORTED, "CAMPAIGN_OVERLAP",
                                        {"sku": "A", "campaignId": first.campaign_id})
    # Touching windows do not overlap: [now, now+1h) ends as the first begins.
    await inv.campaign([("A", SALE, 1, 0)], starts_in=0, lasts=3600)
    assert await refusal(inv.campaign([("B", 10, 6, 0)], starts_in=10000)) == (
        grpc.StatusCode.ABORTED, "OUT_OF_STOCK", {"sku": "B", "available": "5", "skus": "B"})
    assert (await refusal(inv.campaign([("B", 10, 1, 0), ("NOPE", 10, 1, 0)], starts_in=10000)))[:2] == (
        grpc.StatusCode.NOT_FOUND, "SKU_NOT_FOUND")
    # Nothing of a refused campaign stays: B is untouched, and only the two made exist.
    assert (await inv.level("B")).set_aside == 0
    assert stored(inv.dsn, "SELECT count(*) FROM inventory.campaigns") == [(2,)]
    # A campaign cancelled before it started frees its window.
    await inv.stub.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=first.campaign_id))
    await inv.campaign([("A", SALE, 10, 0)], starts_in=3600, lasts=3600)
    assert await audit_of(inv.dsn) == []


@pytest.mark.parametrize(("change", "field"), [
    (dict(name=""), "name"),
    (dict(name="x" * 201), "name"),
    (dict(starts_at=None), "startsAt"),
    (dict(ends_at=None), "endsAt"),
    (dict(lasts=0), "endsAt"),
    (dict(lasts=-60), "endsAt"),
    (dict(lasts=7 * 86400 + 1), "endsAt"),
    (dict(starts_in=-7200, lasts=3600), "endsAt"),  # ended already, by the database's clock
    (dict(items=[]), "items"),
    (dict(items=[("A", 10, 1, 0)] * 2), "items[1].sku"),
    (dict(items=[(f"S{i}", 10, 1, 0) for i in range(101)]), "items"),
    (dict(items=[("", 10, 1, 0)]), "items[0].sku"),
    (dict(items=[("A\x00", 10, 1, 0)]), "items[0].sku"),
    (dict(name="a\x00b"), "name"),
    (dict(raw_starts=400_000_000_000), "startsAt"),  # past any calendar date
    (dict(items=[("A", 0, 1, 0)]), "items[0].salePrice"),
    (dict(items=[("A", 2_000_000_001, 1, 0)]), "items[0].salePrice"),
    (dict(items=[("B", 10, 1, 0), ("A", 10, 0, 0)]), "items[1].quota"),
    (dict(items=[("A", 10, 1_000_001, 0)]), "items[0].quota"),
    (dict(items=[("A", 3000, 1_000_000, 0)]), "items[0].quota"),  # revenue past an int32
    (dict(items=[("A", 10, 1, -1)]), "items[0].maxPerUser"),
])
async def test_a_bad_campaign_is_invalid_argument_naming_the_rest_field(inv, change, field):
    await inv.stock("A", 10)
    await inv.stock("B", 10)
    now = await inv.db_now()
    starts = now + timedelta(seconds=change.get("starts_in", 60))
    request = new_campaign(change.get("items", [("A", SALE, 5, 0)]), starts,
                           starts + timedelta(seconds=change.get("lasts", 3600)), name=change.get("name", "Flash"))
    for unset in ("starts_at", "ends_at"):
        if unset in change:
            request.ClearField(unset)
    if "raw_starts" in change:
        request.starts_at.seconds = change["raw_starts"]
    assert await refusal(inv.stub.CreateCampaign(request)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                                                               {"field": field})
    assert stored(inv.dsn, "SELECT count(*), (SELECT sum(set_aside) FROM inventory.stock) FROM inventory.campaigns"
                  ) == [(0, 0)]


async def test_creating_and_cancelling_are_idempotent_with_their_keys(inv):
    await inv.stock("A", 100)
    first = await inv.campaign([("A", SALE, 10, 0)], starts_in=60, key="c-1")
    now = await inv.db_now()
    again = await inv.stub.CreateCampaign(new_campaign([("A", SALE, 10, 0)], first.starts_at.ToDatetime(),
                                                       first.ends_at.ToDatetime(), "c-1"))
    assert again.campaign_id == first.campaign_id
    assert (await inv.level("A")).set_aside == 10
    assert await refusal(inv.stub.CreateCampaign(new_campaign([("A", SALE, 11, 0)], now + timedelta(seconds=60),
                                                              now + timedelta(hours=1), "c-1"))) == (
        grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_REUSED", {"operation": "create_campaign"})
    cancel = inventory_pb2.CancelCampaignRequest(campaign_id=first.campaign_id, idempotency_key="x-1")
    cancelled = await inv.stub.CancelCampaign(cancel)
    inv.clock.advance(5)
    replayed = await inv.stub.CancelCampaign(cancel)
    assert cancelled.status == replayed.status == inventory_pb2.CANCELLED
    assert replayed.cancelled_at == cancelled.cancelled_at
    assert stored(inv.dsn, "SELECT reason, count(*) FROM inventory.ledger WHERE campaign_id IS NOT NULL"
                           " GROUP BY reason ORDER BY reason") == [("CAMPAIGN_END", 1), ("SET_ASIDE", 1)]
    assert await audit_of(inv.dsn) == []


async def test_cancel_gives_the_quota_back_and_unknown_campaigns_are_not_found(inv):
    await inv.stock("A", 100)
    await inv.stock("B", 100)
    scheduled = await inv.campaign([("A", SALE, 30, 0)], starts_in=60)
    live = await inv.campaign([("B", SALE, 20, 0)], starts_in=0)
    assert live.status == inventory_pb2.LIVE
    held = await inv.add("u1", "B", 3)
    assert (held.price, held.campaign_id) == (SALE, live.campaign_id)
    inv.clock.advance(10)
    now = inv.clock.now()

    cancelled = await inv.stub.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=scheduled.campaign_id))
    assert cancelled.status == inventory_pb2.CANCELLED
    assert cancelled.cancelled_at.ToDatetime() == now.replace(tzinfo=None)
    assert cancelled.ends_at == scheduled.ends_at
    assert figures(cancelled.items[0]) == dict(quota=30, held=0, sold=0, remaining=0, returned=30, revenue=0,
                                               buyers=0)
    assert (await inv.level("A")).available == 100

    ended = await inv.stub.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=live.campaign_id))
    assert ended.status == inventory_pb2.ENDED
    assert ended.ends_at.ToDatetime() == ended.cancelled_at.ToDatetime() == now.replace(tzinfo=None)
    assert figures(ended.items[0]) == dict(quota=20, held=3, sold=0, remaining=0, returned=17, revenue=0, buyers=0)
    level = await inv.level("B")
    assert (level.reserved, level.set_aside, level.available) == (3, 0, 97)
    # The held units keep their price; growing them is refused now the sale has ended.
    assert (await refusal(inv.stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=held.hold_id, add_qty=1))
                          ))[1:] == ("SALE_ENDED", {"sku": "B", "skus": "B"})
    # Cancelling again answers the campaign as it is.
    again = await inv.stub.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=live.campaign_id))
    assert (again.status, again.ends_at) == (inventory_pb2.ENDED, ended.ends_at)
    for unknown in ("3f1c1a52-5d0e-4a55-9a7e-0d1f4e6c2b11", "not-a-uuid", ""):
        assert (await refusal(inv.stub.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=unknown)))
                )[:2] == (grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")
    got = await inv.stub.GetCampaigns(inventory_pb2.GetCampaignsRequest(
        campaign_ids=[live.campaign_id, "nope", "3f1c1a52-5d0e-4a55-9a7e-0d1f4e6c2b11", scheduled.campaign_id]))
    assert [c.campaign_id for c in got.campaigns] == [live.campaign_id, scheduled.campaign_id]
    assert got.server_time.ToDatetime() == now.replace(tzinfo=None)
    assert await audit_of(inv.dsn) == []


async def test_listing_filters_by_status_sku_and_what_a_storefront_shows(inv):
    for sku in "ABCDE":
        await inv.stock(sku, 100)
    live = await inv.campaign([("A", SALE, 5, 0)], starts_in=0, lasts=600, name="live")
    soon = await inv.campaign([("B", SALE, 5, 0), ("C", SALE, 5, 0)], starts_in=3600, name="soon")
    later = await inv.campaign([("C", SALE, 5, 0)], starts_in=2 * 86400, name="later")
    cancelled = await inv.campaign([("D", SALE, 5, 0)], starts_in=60, name="cancelled")
    await inv.stub.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=cancelled.campaign_id))
    ended = await inv.campaign([("E", SALE, 5, 0)], starts_in=1, lasts=29, name="ended")
    inv.clock.advance(31)

    async def names(**kwargs) -> tuple[list[str], int]:
        answer = await inv.stub.ListCampaigns(inventory_pb2.ListCampaignsRequest(**kwargs))
        return [c.name for c in answer.campaigns], answer.total

    assert await names() == (["live", "ended", "cancelled", "soon", "later"], 5)
    assert await names(status=inventory_pb2.LIVE) == (["live"], 1)
    assert await names(status=inventory_pb2.SCHEDULED) == (["soon", "later"], 2)
    assert await names(status=inventory_pb2.ENDED) == (["ended"], 1)
    assert await names(status=inventory_pb2.CANCELLED) == (["cancelled"], 1)
    assert await names(starting_within_seconds=86400) == (["live", "soon"], 2)
    assert await names(starting_within_seconds=86400, skus=["C", "Z"]) == (["soon"], 1)
    assert await names(skus=["C"]) == (["soon", "later"], 2)
    assert await names(limit=2, page=2) == (["cancelled", "soon"], 5)
    assert await names(limit=2, page=9) == ([], 5)
    listed = (await inv.stub.ListCampaigns(inventory_pb2.ListCampaignsRequest(skus=["C"]))).campaigns[0]
    assert [i.sku for i in listed.items] == ["B", "C"], "a campaign answered carries all its items"
    assert {c.campaign_id for c in (await inv.stub.ListCampaigns(inventory_pb2.ListCampaignsRequest(
        status=inventory_pb2.SCHEDULED))).campaigns} == {soon.campaign_id, later.campaign_id}
    assert live.campaign_id and ended.campaign_id
    for bad, field in ((dict(limit=101), "limit"), (dict(page=-1), "page"), (dict(status=9), "status"),
                       (dict(starting_within_seconds=-1), "starting_within_seconds"),
                       (dict(skus=[f"S{i}" for i in range(501)]), "skus")):
        assert await refusal(inv.stub.ListCampaigns(inventory_pb2.ListCampaignsRequest(**bad))) == (
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {"field": field})


# --- buying from a quota ---------------------------------------------------------------------------------


async def test_a_live_campaign_sells_its_quota_at_the_sale_price_and_regular_stock_on_request(inv):
    await inv.stock("A", 100)
    await inv.stock("R", 10)
    campaign = await inv.campaign([("A", SALE, 10, 0)], starts_in=60)
    early = await inv.add("u0", "A", 1)
    assert (early.price, early.campaign_id) == (PRICE, ""), "before startsAt: the regular price, regular stock"
    assert (await refusal(inv.add("u0", "A", 1, expected=SALE)))[1:] == ("PRICE_CHANGED",
                                                                           {"sku": "A", "price": str(PRICE)})
    inv.clock.advance(60)
    sale = await inv.add("u1", "A", 3)
    named = await inv.add("u2", "A", 2, expected=SALE)
    regular = await inv.add("u3", "A", 1, expected=PRICE)
    assert [(h.price, h.campaign_id) for h in (sale, named, regular)] == [
        (SALE, campaign.campaign_id), (SALE, campaign.campaign_id), (PRICE, "")]
    assert (await refusal(inv.add("u4", "A", 1, expected=999)))[1:] == ("PRICE_CHANGED",
                                                                         {"sku": "A", "price": str(SALE)})
    level = await inv.level("A")
    assert (level.on_hand, level.reserved, level.set_aside, level.available) == (100, 7, 5, 88)
    assert await refusal(inv.add("u5", "A", 6)) == (grpc.StatusCode.ABORTED, "SALE_SOLD_OUT",
                                                    {"sku": "A", "remaining": "5", "available": "88"})
    # A hold keeps its price and source: it grows from the quota, shrinks back into it, and says its price.
    grow = inventory_pb2.ResizeHoldRequest(hold_id=sale.hold_id, add_qty=6)
    assert (await refusal(inv.stub.ResizeHold(grow)))[1:] == ("SALE_SOLD_OUT",
                                                              {"sku": "A", "remaining": "5", "available": "88"})
    assert (await refusal(inv.stub.ResizeHold(inventory_pb2.ResizeHoldRequest(
        hold_id=sale.hold_id, add_qty=1, expected_price=PRICE))))[1:] == ("PRICE_CHANGED",
                                                                          {"sku": "A", "price": str(SALE)})
    grown = (await inv.stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=sale.hold_id, add_qty=2,
                                                                       expected_price=SALE))).hold
    assert (grown.qty, grown.price, grown.campaign_id) == (5, SALE, campaign.campaign_id)
    # A regular line does not grow at the regular price while the sale is live, unless that price is asked for.
    assert (await refusal(inv.stub.ResizeHold(inventory_pb2.ResizeHoldRequest(
        hold_id=regular.hold_id, qty=3))))[1:] == ("PRICE_CHANGED", {"sku": "A", "price": str(SALE)})
    await inv.stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=regular.hold_id, qty=3, expected_price=PRICE))
    await inv.stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=sale.hold_id, qty=4))
    await inv.stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[named.hold_id]))
    await inv.stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[sale.hold_id]))
    level = await inv.level("A")
    assert (level.on_hand, level.reserved, level.set_aside, level.available) == (96, 4, 6, 86)
    item = (await inv.figures(campaign.campaign_id)).items[0]
    assert figures(item) == dict(quota=10, held=0, sold=4, remaining=6, returned=0, revenue=4 * SALE, buyers=1)
    # The early add that named the sale price counts against the item too.
    assert dict(item.refused) == {"PRICE_CHANGED": 4, "SALE_SOLD_OUT": 2}
    got = (await inv.stub.GetHolds(inventory_pb2.GetHoldsRequest(hold_ids=[sale.hold_id, regular.hold_id]))).holds
    assert [(h.price, h.campaign_id) for h in got] == [(SALE, campaign.campaign_id), (PRICE, "")]
    listed = (await inv.stub.ListHolds(inventory_pb2.ListHoldsRequest(owner_prefix="cart:u3", limit=10))).holds
    assert [(h.price, h.campaign_id) for h in listed] == [(PRICE, "")]
    # A SKU in no campaign: its regular price, or the expected price refused.
    assert (await inv.add("u6", "R", 1, expected=PRICE)).price == PRICE
    assert (await refusal(inv.add("u6", "R", 1, expected=SALE)))[1:] == ("PRICE_CHANGED",
                                                                         {"sku": "R", "price": str(PRICE)})
    assert await audit_of(inv.dsn) == []


async def test_a_replayed_add_answers_the_price_and_campaign_it_held_at(inv):
    await inv.stock("A", 10)
    campaign = await inv.campaign([("A", SALE, 5, 0)])
    request = inventory_pb2.CreateHoldsRequest(owner="cart:k", buyer="k", ttl_seconds=600, idempotency_key="add-1",
                                               lines=[inventory_pb2.HoldLine(sku="A", qty=2, price=PRICE)])
    first = await inv.stub.CreateHolds(request)
    again = await inv.stub.CreateHolds(request)
    assert first == again and again.holds[0].price == SALE and again.holds[0].campaign_id == campaign.campaign_id
    assert (await inv.level("A")).reserved == 2


async def test_max_per_user_counts_the_buyers_units_of_that_campaign_item(inv):
    await inv.stock("A", 100)
    await inv.stock("B", 100)
    campaign = await inv.campaign([("A", SALE, 20, 2), ("B", SALE, 20, 0)])
    await inv.add("u1", "A", 1, expected=PRICE)  # regular units are not the campaign's
    first = await inv.add("u1", "A", 2)
    assert await refusal(inv.add("u1", "A", 1)) == (grpc.StatusCode.ABORTED, "PURCHASE_LIMIT",
                                                    {"sku": "A", "limit": "2", "has": "2"})
    assert (await refusal(inv.stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=first.hold_id, add_qty=1))
                          ))[1:] == ("PURCHASE_LIMIT", {"sku": "A", "limit": "2", "has": "2"})
    await inv.stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[first.hold_id]))
    assert (await refusal(inv.add("u1", "A", 1)))[1] == "PURCHASE_LIMIT", "sold units count too"
    await inv.add("u2", "A", 2)
    # max_per_user 0: the store's limit of the request, over the campaign's units.
    await inv.add("u1", "B", 3, limit=3)
    assert (await refusal(inv.add("u1", "B", 1, limit=3)))[1:] == ("PURCHASE_LIMIT",
                                                                   {"sku": "B", "limit": "3", "has": "3"})
    # The store-wide limit still counts every unit of the SKU, the regular ones too.
    assert (await refusal(inv.add("u1", "A", 1, expected=PRICE, limit=3)))[1:] == (
        "PURCHASE_LIMIT", {"sku": "A", "limit": "3", "has": "3"})
    assert dict((await inv.figures(campaign.campaign_id)).items[0].refused) == {"PURCHASE_LIMIT": 3}
    assert await audit_of(inv.dsn) == []


async def test_at_its_end_the_quota_goes_back_at_once_and_returning_units_follow_the_clock(inv):
    await inv.stock("A", 100)
    campaign = await inv.campaign([("A", SALE, 20, 0)], lasts=60)
    before_end = await inv.add("u1", "A", 2, ttl=30)
    after_end = await inv.add("u2", "A", 3, ttl=100)
    sold = await inv.add("u3", "A", 4)
    await inv.stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[sold.hold_id]))
    inv.clock.advance(40)
    # Expired while live: its units count as the quota's again at once, before any write reclaims them.
    level = await inv.level("A")
    assert (level.reserved, level.set_aside, level.available) == (3, 13, 80)
    assert figures((await inv.figures(campaign.campaign_id)).items[0])["remaining"] == 13
    inv.clock.advance(20)  # the end: nothing wrote to A since
    level = await inv.level("A")
    assert (level.on_hand, level.reserved, level.set_aside, level.available) == (96, 3, 0, 93)
    assert stored(inv.dsn, "SELECT set_aside, reserved FROM inventory.stock WHERE sku = 'A'") == [(11, 5)]
    ended = await inv.figures(campaign.campaign_id)
    assert ended.status == inventory_pb2.ENDED
    assert figures(ended.items[0]) == dict(quota=20, held=3, sold=4, remaining=0, returned=13, revenue=4 * SALE,
                                           buyers=1)
    # After the end the SKU sells at its regular price; the write closes the item as of the end.
    assert (await inv.add("u4", "A", 1)).price == PRICE
    assert stored(inv.dsn, "SELECT remaining, returned, closed_at = (SELECT ends_at FROM inventory.campaigns)"
                           " FROM inventory.campaign_items") == [(0, 13, True)]
    assert stored(inv.dsn, "SELECT reason, hold_id::text, reserved_delta, set_aside_delta FROM inventory.ledger"
                           " WHERE reason IN ('EXPIRE', 'CAMPAIGN_END') ORDER BY id") == [
        ("EXPIRE", before_end.hold_id, -2, 2), ("CAMPAIGN_END", None, 0, -13)]
    # A hold that expires after the end gives its units to regular stock.
    inv.clock.advance(40)
    await inv.add("u5", "A", 1)
    assert stored(inv.dsn, "SELECT reserved_delta, set_aside_delta FROM inventory.ledger WHERE hold_id = %s"
                           " AND reason = 'EXPIRE'", after_end.hold_id) == [(-3, 0)]
    assert figures((await inv.figures(campaign.campaign_id)).items[0])["returned"] == 16
    level = await inv.level("A")
    assert (level.reserved, level.set_aside, level.available) == (2, 0, 94)
    assert await audit_of(inv.dsn) == []


async def test_units_given_back_go_to_the_quota_while_live_and_to_regular_stock_after(inv):
    await inv.stock("A", 50)
    campaign = await inv.campaign([("A", SALE, 10, 0)], lasts=60)
    a, b, c = [await inv.add(f"u{i}", "A", 2) for i in range(3)]
    await inv.stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[a.hold_id]))
    assert (await inv.level("A")).set_aside == 6
    inv.clock.advance(61)
    await inv.stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[b.hold_id]))
    shrunk = (await inv.stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=c.hold_id, qty=1))).hold
    assert (shrunk.price, shrunk.campaign_id) == (SALE, campaign.campaign_id)
    level = await inv.level("A")
    assert (level.reserved, level.set_aside, level.available) == (1, 0, 49)
    assert figures((await inv.figures(campaign.campaign_id)).items[0]) == dict(
        quota=10, held=1, sold=0, remaining=0, returned=9, revenue=0, buyers=0)
    assert await audit_of(inv.dsn) == []


async def test_checkout_holds_an_expired_sale_line_again_only_from_its_live_quota(inv):
    await inv.stock("A", 20)
    await inv.stock("R", 5)
    campaign = await inv.campaign([("A", SALE, 5, 0)], lasts=300)

    def extend(*holds, order="o1"):
        return inv.stub.ExtendHolds(inventory_pb2.ExtendHoldsRequest(
            hold_ids=[h.hold_id for h in holds], owner=f"order:{order}", order_id=order, ttl_seconds=900))

    sale = await inv.add("u1", "A", 2, ttl=10)
    regular = await inv.add("u1", "R", 2, ttl=10)
    inv.clock.advance(11)
    # Expired while live: held again from the quota, at the sale price; the regular one at its own price.
    moved = (await extend(sale, regular)).holds
    assert [(h.price, h.campaign_id, h.qty, h.owner) for h in moved] == [
        (SALE, campaign.campaign_id, 2, "order:o1"), (PRICE, "", 2, "order:o1")]
    assert moved[0].hold_id != sale.hold_id
    assert [h.hold_id for h in (await extend(sale, regular)).holds] == [h.hold_id for h in moved]
    # A quota too short for the expired line: SALE_SOLD_OUT and nothing changes.
    short = await inv.add("u2", "A", 2, ttl=10)
    await inv.add("u3", "A", 1)
    inv.clock.advance(11)
    await inv.add("u4", "A", 2)  # takes the units back first
    snapshot = "SELECT (SELECT count(*) FROM inventory.ledger), (SELECT array_agg(state || owner ORDER BY id)" \
               " FROM inventory.holds), (SELECT array_agg(remaining) FROM inventory.campaign_items)"
    before = stored(inv.dsn, snapshot)
    assert (await refusal(extend(short, order="o2")))[1:] == ("SALE_SOLD_OUT",
                                                              {"sku": "A", "remaining": "0", "available": "15"})
    assert stored(inv.dsn, snapshot) == before, "a refused checkout changes nothing"
    # After the end: an active sale line moves on at its price, an expired one is SALE_ENDED.
    active = await inv.add("u5", "R", 1)
    inv.clock.advance(300)
    before = stored(inv.dsn, snapshot)
    assert await refusal(extend(short, active, order="o3")) == (grpc.StatusCode.ABORTED, "SALE_ENDED",
                                                                 {"sku": "A", "skus": "A"})
    assert stored(inv.dsn, snapshot) == before
    (kept,) = (await extend(moved[0], order="o1")).holds
    assert (kept.hold_id, kept.price, kept.campaign_id) == (moved[0].hold_id, SALE, campaign.campaign_id)
    assert await audit_of(inv.dsn) == []


async def test_the_sweeper_closes_ended_campaigns_of_skus_nobody_writes_to(inv):
    await inv.stock("A", 10)
    await inv.stock("B", 10)
    await inv.campaign([("A", SALE, 4, 0), ("B", SALE, 6, 0)], lasts=60)
    await inv.add("u1", "A", 1, ttl=30)
    inv.clock.advance(61)
    assert stored(inv.dsn, "SELECT sum(set_aside) FROM inventory.stock") == [(9,)]
    swept = await asyncio.gather(inv.service.sweep_once(), inv.service.sweep_once())
    assert sum(swept) == 3, "one hold and two items, each settled once by two sweepers at once"
    assert stored(inv.dsn, "SELECT sum(set_aside), sum(reserved) FROM inventory.stock") == [(0, 0)]
    assert stored(inv.dsn, "SELECT count(*) FROM inventory.campaign_items WHERE closed_at IS NULL") == [(0,)]
    assert stored(inv.dsn, "SELECT DISTINCT actor FROM inventory.ledger WHERE reason = 'CAMPAIGN_END'") == [
        ("inventory-sweeper",)]
    assert await inv.service.sweep_once() == 0
    assert await audit_of(inv.dsn) == []


# --- real crowds and the database's clock ----------------------------------------------------------------


async def outcome(call) -> str | inventory_pb2.Hold:
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        info = error_info(err)
        return info.reason if info else err.code().name


async def test_a_crowd_on_a_quota_gets_exactly_the_quota_over_two_replicas(fresh_dsn):
    """300 buyers at once, one unit each, a quota of 50 out of 200 units, two servers each with its own pool and
    coalescer: exactly 50 holds at the sale price, 250 SALE_SOLD_OUT, regular stock untouched."""
    async with running(fresh_dsn, SystemClock()) as a, running(fresh_dsn, SystemClock()) as b:
        await a.stock("HOT", 200)
        campaign = await a.campaign([("HOT", SALE, 50, 0)])
        answers = await asyncio.gather(*((a, b)[i % 2].add(f"buyer-{i}", "HOT") for i in range(300)),
                                       return_exceptions=True)
        held = [h for h in answers if isinstance(h, inventory_pb2.Hold)]
        refused = collections.Counter(error_info(e).reason for e in answers if isinstance(e, grpc.aio.AioRpcError))
        assert len(held) == 50 and refused == {"SALE_SOLD_OUT": 250}
        assert {(h.price, h.campaign_id) for h in held} == {(SALE, campaign.campaign_id)}
        level = await b.level("HOT")
        assert (level.on_hand, level.reserved, level.set_aside, level.available) == (200, 50, 0, 150)
        item = (await a.figures(campaign.campaign_id)).items[0]
        assert (item.held, item.remaining, dict(item.refused)) == (50, 0, {"SALE_SOLD_OUT": 250})
        # The regular stock is still all there, at the regular price, for whoever asks for it.
        assert (await a.add("late", "HOT", 150, expected=PRICE)).price == PRICE
        assert await audit_of(fresh_dsn) == []


async def test_max_per_user_holds_under_a_crowd_of_one_buyers_adds(live_inv):
    await live_inv.stock("A", 100)
    await live_inv.campaign([("A", SALE, 50, 3)])
    answers = await asyncio.gather(*(outcome(live_inv.add("greedy", "A")) for _ in range(30)),
                                   *(outcome(live_inv.add(f"other-{i}", "A")) for i in range(10)))
    greedy = collections.Counter(a if isinstance(a, str) else "held" for a in answers[:30])
    assert greedy == {"held": 3, "PURCHASE_LIMIT": 27}
    assert all(isinstance(a, inventory_pb2.Hold) for a in answers[30:])
    assert stored(live_inv.dsn, "SELECT buyer, sum(qty) FROM inventory.holds WHERE buyer = 'greedy'"
                                " GROUP BY buyer") == [("greedy", 3)]
    assert await audit_of(live_inv.dsn) == []


async def test_the_database_clock_decides_the_opening_and_closing_instants(live_inv):
    """Adds sent one after another across startsAt and endsAt: every hold made at or after startsAt (by the
    database's clock, as its stamp says) is at the sale price and none before; at endsAt the quota is back at once."""
    await live_inv.stock("A", 500)
    campaign = await live_inv.campaign([("A", SALE, 200, 0)], starts_in=1.0, lasts=1.5)
    starts_at, ends_at = (stored(live_inv.dsn, "SELECT starts_at, ends_at FROM inventory.campaigns")[0])
    assert (await live_inv.level("A")).set_aside == 200

    async def buyer(i: int):
        await asyncio.sleep(i * 0.05)
        return await live_inv.add(f"b{i}", "A")

    holds = await asyncio.gather(*(buyer(i) for i in range(60)))
    made = dict(stored(live_inv.dsn, "SELECT id::text, created_at FROM inventory.holds"))
    prices = collections.Counter()
    for hold in holds:
        at = made[hold.hold_id]
        expected = (SALE, campaign.campaign_id) if starts_at <= at < ends_at else (PRICE, "")
        assert (hold.price, hold.campaign_id) == expected, (at, starts_at, ends_at)
        prices[hold.price] += 1
    assert prices[SALE] > 0 and prices[PRICE] > 0
    # The ledger says the same, entry by entry.
    assert stored(live_inv.dsn, "SELECT count(*) FROM inventory.ledger l JOIN inventory.holds h ON h.id = l.hold_id"
                                " WHERE l.created_at <> h.created_at OR (l.campaign_id IS NOT NULL)"
                                "   <> (l.created_at >= %s AND l.created_at < %s)", starts_at, ends_at) == [(0,)]
    # Past endsAt, what is left of the quota is regular stock at once, swept or not.
    while stored(live_inv.dsn, "SELECT clock_timestamp() < %s", ends_at)[0][0]:
        await asyncio.sleep(0.05)
    level = await live_inv.level("A")
    assert (level.set_aside, level.available) == (0, 500 - 60)
    assert await audit_of(live_inv.dsn) == []


async def test_checkout_of_an_expired_sale_line_keeps_the_buyer_within_the_campaigns_limit(inv):
    await inv.stock("A", 20)
    await inv.campaign([("A", SALE, 10, 2)])
    lapsed = await inv.add("u1", "A", 2, ttl=10)
    inv.clock.advance(11)
    await inv.add("u1", "A", 1)  # within the limit again once the first expired
    assert await refusal(inv.stub.ExtendHolds(inventory_pb2.ExtendHoldsRequest(
        hold_ids=[lapsed.hold_id], owner="order:o", order_id="o", ttl_seconds=900))) == (
        grpc.StatusCode.ABORTED, "PURCHASE_LIMIT", {"sku": "A", "limit": "2", "has": "1"})
    assert stored(inv.dsn, "SELECT count(*) FROM inventory.holds WHERE state = 'ACTIVE'") == [(1,)]
    assert await audit_of(inv.dsn) == []


async def test_concurrent_creates_of_overlapping_campaigns_make_exactly_one_and_never_deadlock(live_inv):
    for sku in ("A", "B", "C"):
        await live_inv.stock(sku, 100)
    orders = [["A", "B", "C"], ["C", "B", "A"], ["B", "A"], ["C", "A"]]
    answers = await asyncio.gather(*(outcome(live_inv.campaign([(s, SALE, 10, 0) for s in orders[i % 4]],
                                                               name=f"c{i}")) for i in range(12)))
    made = [a for a in answers if not isinstance(a, str)]
    assert len(made) == 1 and collections.Counter(a for a in answers if isinstance(a, str)) == {
        "CAMPAIGN_OVERLAP": 11}
    levels = (await live_inv.stub.GetAvailability(inventory_pb2.GetAvailabilityRequest(skus=["A", "B", "C"]))).items
    assert {lv.sku: lv.set_aside for lv in levels} == {s: (10 if s in {i.sku for i in made[0].items} else 0)
                                                       for s in "ABC"}
    assert await audit_of(live_inv.dsn) == []


async def test_a_live_campaign_cancelled_in_a_crowd_sells_nothing_after_its_cancel(live_inv):
    await live_inv.stock("A", 300)
    campaign = await live_inv.campaign([("A", SALE, 100, 0)])

    async def buyer(i: int):
        await asyncio.sleep(i * 0.01)
        return await outcome(live_inv.add(f"b{i}", "A"))

    crowd = asyncio.gather(*(buyer(i) for i in range(120)))
    await asyncio.sleep(0.5)
    cancelled = await live_inv.stub.CancelCampaign(inventory_pb2.CancelCampaignRequest(
        campaign_id=campaign.campaign_id))
    holds = [h for h in await crowd if not isinstance(h, str)]
    assert len(holds) == 120
    at = cancelled.ends_at.ToDatetime(timezone.utc)
    made = dict(stored(live_inv.dsn, "SELECT id::text, created_at FROM inventory.holds"))
    assert all((h.price == SALE) == (made[h.hold_id] < at) for h in holds)
    sale = sum(h.price == SALE for h in holds)
    assert 0 < sale < 120
    level = await live_inv.level("A")
    assert (level.reserved, level.set_aside, level.available) == (120, 0, 180)
    item = (await live_inv.figures(campaign.campaign_id)).items[0]
    assert (item.held, item.remaining, item.returned) == (sale, 0, 100 - sale)
    assert await audit_of(live_inv.dsn) == []
