"""The campaigns' rules on the catalog's side, on fakes of the repository and of inventory: the catalog's checks come
first and inventory's refusals pass through unchanged; a storefront's kept answers flip to LIVE at startsAt and
carry serverTime by the database's clock when sent; campaigns are asked beside availability and fail a page the same
way; a product's campaign object is null or the campaign shown."""

import asyncio
import contextlib
from datetime import datetime, timedelta

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from catalog_svc import repository
from catalog_svc.campaign_servicer import CampaignServicer
from catalog_svc.campaigns import MAX_ITEMS, Campaigns, ServerClock
from catalog_svc.model import ProductRow
from catalog_svc.query import parse_list_query
from catalog_svc.service import Catalog
from catalog_svc.servicer import CatalogServicer
from shop.catalog.v1 import campaigns_pb2, catalog_pb2
from shop.inventory.v1 import inventory_pb2
from shop_runtime.errors import ServiceError, unavailable
from tests.unit.fakes.campaigns import DbClock, FakeCampaignInventory


ROWS = {
    "EL-0001": ProductRow("EL-0001", "Wireless Mouse", "", "electronic", 149000, 0),
    "EL-0002": ProductRow("EL-0002", "Keyboard", "", "electronic", 300000, 0),
    "EL-0003": ProductRow("EL-0003", "Hidden", "", "electronic", 50000, 0, listed=False),
}


class Timer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakePool:
    @contextlib.asynccontextmanager
    async def connection(self):
        yield object()


@pytest.fixture
def reads(monkeypatch):
    asked: list[list[str]] = []

    async def get_products(conn, skus, *, unlisted=False):
        asked.append(list(skus))
        return [ROWS[s] for s in skus if s in ROWS and (unlisted or ROWS[s].listed)]

    async def list_page(conn, query, total):
        return list(ROWS.values())[:2]

    async def count_products(conn, query):
        return 2

    monkeypatch.setattr(repository, "get_products", get_products)
    monkeypatch.setattr(repository, "list_page", list_page)
    monkeypatch.setattr(repository, "count_products", count_products)
    return asked


@pytest.fixture
def db():
    return DbClock()


@pytest.fixture
def inventory(db):
    return FakeCampaignInventory(db, {"EL-0001": 500, "EL-0002": 50, "EL-0003": 10})


@pytest.fixture
def timer():
    return Timer()


@pytest.fixture
def campaigns(inventory, db, timer, reads):
    return Campaigns(FakePool(), inventory, clock=ServerClock(db.machine), cache_seconds=1.0, timer=timer)


def new(db: DbClock, *items: tuple[str, int, int], starts_in: float = 3600, lasts: float = 7200, name="12.12"):
    starts = db.db() + timedelta(seconds=starts_in)
    request = inventory_pb2.CreateCampaignRequest(name=name, items=[
        inventory_pb2.NewCampaignItem(sku=s, sale_price=p, quota=q, max_per_user=2) for s, p, q in items])
    request.starts_at.FromDatetime(starts)
    request.ends_at.FromDatetime(starts + timedelta(seconds=lasts))
    return request


async def refused(coro) -> ServiceError:
    with pytest.raises(ServiceError) as err:
        await coro
    return err.value


# --- creating ------------------------------------------------------------------------------------------------------


async def test_a_campaign_is_created_with_the_key_and_admin_and_answered_with_names_and_prices(campaigns, inventory, db):
    view = await campaigns.create(new(db, ("EL-0001", 99000, 200), ("EL-0002", 1, 5)), "key-1", "admin-7")
    assert view.campaign.status == "SCHEDULED" and view.campaign.created_by == "admin-7"
    assert [(i.sku, i.sale_price, i.quota, i.remaining) for i in view.campaign.items] == [
        ("EL-0001", 99000, 200, 200), ("EL-0002", 1, 5, 5)]
    assert {s: (p.name, p.price) for s, p in view.products.items()} == {
        "EL-0001": ("Wireless Mouse", 149000), "EL-0002": ("Keyboard", 300000)}
    (method, sent), = inventory.calls
    assert method == "create" and sent.idempotency_key == "key-1"
    assert inventory.available("EL-0001") == 300
    # The same key again: the first answer, nothing set aside twice.
    again = await campaigns.create(new(db, ("EL-0001", 99000, 200), ("EL-0002", 1, 5)), "key-1", "admin-7")
    assert again.campaign.campaign_id == view.campaign.campaign_id and inventory.available("EL-0001") == 300


@pytest.mark.parametrize("sku", ["NO-SUCH", "EL-0003", "bad sku!", "EL-\x00", "x" * 300])
async def test_an_unknown_or_unlisted_sku_is_product_not_found_before_inventory_is_asked(campaigns, inventory, db, sku):
    err = await refused(campaigns.create(new(db, ("EL-0001", 99000, 1), (sku, 100, 1)), "", "admin"))
    assert (err.code, err.reason, err.metadata) == (grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND", {"sku": sku})
    assert inventory.calls == [] and inventory.available("EL-0001") == 500


@pytest.mark.parametrize("price", [0, -5, 149000, 149001, 2_000_000_000])
async def test_a_sale_price_outside_one_to_the_price_less_one_names_its_item(campaigns, inventory, db, price):
    err = await refused(campaigns.create(new(db, ("EL-0002", 1000, 1), ("EL-0001", price, 1)), "", "admin"))
    assert (err.code, err.reason, err.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {"field": "items[1].salePrice"})
    assert inventory.calls == []


async def test_a_name_with_a_nul_is_refused_before_inventory_is_asked(campaigns, inventory, db):
    err = await refused(campaigns.create(new(db, ("EL-0001", 1, 1), name="a\x00b"), "", "admin"))
    assert (err.reason, err.metadata) == ("INVALID_ARGUMENT", {"field": "name"})
    assert inventory.calls == []


async def test_the_highest_sale_price_is_the_price_less_one(campaigns, db):
    view = await campaigns.create(new(db, ("EL-0001", 148999, 1)), "", "admin")
    assert view.campaign.items[0].sale_price == 148999


@pytest.mark.parametrize("items,field", [
    ([], "items"),
    ([("EL-0001", 1, 1)] * (MAX_ITEMS + 1), "items"),
    ([("EL-0001", 1, 1), ("", 1, 1)], "items[1].sku"),
    ([("EL-0001", 1, 1), ("EL-0002", 1, 1), ("EL-0001", 2, 1)], "items[2].sku"),
])
async def test_items_missing_too_many_nameless_or_twice_are_refused_naming_the_field(campaigns, inventory, db, items,
                                                                                        field):
    err = await refused(campaigns.create(new(db, *items), "", "admin"))
    assert (err.reason, err.metadata) == ("INVALID_ARGUMENT", {"field": field})
    assert inventory.calls == []


async def test_inventorys_refusals_pass_through_unchanged(campaigns, inventory, db):
    first = await campaigns.create(new(db, ("EL-0001", 99000, 100)), "", "admin")
    overlap = await refused(campaigns.create(new(db, ("EL-0002", 9, 1), ("EL-0001", 99000, 1), starts_in=7000), "",
                                             "admin"))
    assert (overlap.code, overlap.reason, overlap.metadata) == (
        grpc.StatusCode.ABORTED, "CAMPAIGN_OVERLAP", {"sku": "EL-0001", "campaignId": first.campaign.campaign_id})
    short = await refused(campaigns.create(new(db, ("EL-0002", 9, 51)), "", "admin"))
    assert (short.reason, short.metadata) == ("OUT_OF_STOCK", {"sku": "EL-0002", "available": "50", "skus": "EL-0002"})
    window = await refused(campaigns.create(new(db, ("EL-0002", 9, 1), lasts=0), "", "admin"))
    assert (window.reason, window.metadata) == ("INVALID_ARGUMENT", {"field": "endsAt"})
    assert inventory.available("EL-0002") == 50 and inventory.available("EL-0001") == 400


async def test_a_listed_product_without_stock_is_out_of_stock_with_none_available(campaigns, inventory, db):
    del inventory.stock["EL-0002"]
    err = await refused(campaigns.create(new(db, ("EL-0002", 9, 1)), "", "admin"))
    assert (err.code, err.reason, err.metadata) == (
        grpc.StatusCode.ABORTED, "OUT_OF_STOCK", {"sku": "EL-0002", "available": "0", "skus": "EL-0002"})


# --- admin reads and cancel ----------------------------------------------------------------------------------------


async def test_cancel_and_admin_reads_are_never_kept_and_unknown_ids_are_campaign_not_found(campaigns, inventory, db):
    created = await campaigns.create(new(db, ("EL-0001", 99000, 100)), "", "admin")
    cid = created.campaign.campaign_id
    assert (await campaigns.get(cid)).campaign.status == "SCHEDULED"
    cancelled = await campaigns.cancel(cid, "", "admin")
    assert cancelled.campaign.status == "CANCELLED" and cancelled.campaign.items[0].returned == 100
    assert (await campaigns.get(cid)).campaign.status == "CANCELLED"  # not a kept answer
    assert inventory.available("EL-0001") == 500
    for bad in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        for call in (campaigns.get(bad), campaigns.cancel(bad, "", "admin")):
            err = await refused(call)
            assert (err.code, err.reason, err.metadata) == (
                grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND", {"campaignId": bad})


async def test_the_admin_list_filters_by_status_and_pages(campaigns, db):
    for n in range(3):
        await campaigns.create(new(db, ("EL-0001", 99000, 1), starts_in=3600 * (n * 3 + 1), name=f"c{n}"), "", "admin")
    db.advance(3600)  # the first is live now
    page, number, limit = await campaigns.list_page("LIVE", None, None)
    assert ([v.campaign.name for v in page.views], page.total, number, limit) == (["c0"], 1, 1, 10)
    page, number, limit = await campaigns.list_page("", 2, 2)
    assert ([v.campaign.name for v in page.views], page.total, number) == (["c2"], 3, 2)
    err = await refused(campaigns.list_page("", 1, 101))
    assert err.metadata == {"field": "limit"}
    for bad in ("live", "2", "BOGUS"):
        assert (await refused(campaigns.list_page(bad, None, None))).metadata == {"field": "status"}


# --- what a storefront is shown ------------------------------------------------------------------------------------


async def test_a_kept_list_flips_to_live_at_starts_at_and_serves_server_time_by_the_database_clock(
        campaigns, inventory, db, timer):
    await campaigns.create(new(db, ("EL-0001", 99000, 10), starts_in=0.5, lasts=60, name="soon"), "", "admin")
    await campaigns.create(new(db, ("EL-0002", 9, 1), starts_in=25 * 3600, name="tomorrow"), "", "admin")
    shown, now = await campaigns.shown()
    assert [(v.campaign.name, status) for v, status in shown] == [("soon", "SCHEDULED")]
    assert now == db.db()  # the database's clock (5 s ahead of this machine's), not the machine's
    lists = sum(1 for m, _ in inventory.calls if m == "list")
    db.advance(0.6)
    timer.now = 0.6  # within the kept answer's life
    shown, now = await campaigns.shown()
    assert [(v.campaign.name, status) for v, status in shown] == [("soon", "LIVE")]
    assert now == db.db()
    assert sum(1 for m, _ in inventory.calls if m == "list") == lists  # the kept answer
    db.advance(60)
    timer.now = 0.9
    assert (await campaigns.shown())[0] == []  # ended: gone from the kept answer too


async def test_a_crowd_on_the_public_list_costs_one_inventory_call(campaigns, inventory, db):
    await campaigns.create(new(db, ("EL-0001", 99000, 10)), "", "admin")
    inventory.listing_open.clear()
    crowd = [asyncio.create_task(campaigns.shown()) for _ in range(200)]
    for _ in range(5):
        await asyncio.sleep(0)
    inventory.listing_open.set()
    answers = await asyncio.gather(*crowd)
    assert {len(shown) for shown, _ in answers} == {1}
    assert sum(1 for m, _ in inventory.calls if m == "list") == 1


async def test_the_public_page_hides_unknown_cancelled_and_long_ended_campaigns(campaigns, inventory, db, timer):
    live = await campaigns.create(new(db, ("EL-0001", 99000, 10), starts_in=0, lasts=3600), "", "admin")
    gone = await campaigns.create(new(db, ("EL-0002", 9, 1)), "", "admin")
    await campaigns.cancel(gone.campaign.campaign_id, "", "admin")
    view, status, now = await campaigns.public(live.campaign.campaign_id)
    assert (status, now) == ("LIVE", db.db())
    for bad in (gone.campaign.campaign_id, "00000000-0000-0000-0000-000000000000", "nope"):
        err = await refused(campaigns.public(bad))
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")
    # An unknown id's answer is kept too: a second read within its life does not ask inventory.
    gets = sum(1 for m, _ in inventory.calls if m == "get")
    await refused(campaigns.public("00000000-0000-0000-0000-000000000000"))
    assert sum(1 for m, _ in inventory.calls if m == "get") == gets
    # Ended less than 24 hours ago: shown as ENDED; more: not found.
    db.advance(3600 + 23 * 3600)
    timer.now = 10.0
    assert (await campaigns.public(live.campaign.campaign_id))[1] == "ENDED"
    db.advance(2 * 3600)
    timer.now = 20.0
    assert (await refused(campaigns.public(live.campaign.campaign_id))).reason == "CAMPAIGN_NOT_FOUND"


async def test_campaigns_of_many_skus_are_read_page_after_page(campaigns, inventory, db):
    inventory.stock = {f"S-{n}": 10 for n in range(150)}
    for n in range(150):
        c = new(db, (f"S-{n}", 1, 1), starts_in=60 + n)
        await inventory.create_campaign(c)
    found = await campaigns.for_skus([f"S-{n}" for n in range(150)] + ["NONE"])
    assert len(found) == 150 and all(len(v) == 1 for v in found.values())
    assert sum(1 for m, _ in inventory.calls if m == "list") == 2


# --- products with their campaign ----------------------------------------------------------------------------------


def listing():
    return parse_list_query(page=None, limit=None, sort_by="", sort_dir="", category="", search="")


async def test_campaigns_are_asked_beside_availability_and_either_failing_fails_the_page_unkept(
        campaigns, inventory, db, timer):
    started: list[str] = []
    gate = asyncio.Event()

    async def availability(skus):
        started.append("availability")
        await gate.wait()
        return {s: 7 for s in skus}

    catalog = Catalog(FakePool(), availability, cache_seconds=1.0, timer=timer, campaigns=campaigns.for_skus)
    inventory.listing_open.clear()
    page = asyncio.create_task(catalog.list_products(listing()))
    for _ in range(20):
        await asyncio.sleep(0)
    # Both asked before either answered.
    assert started == ["availability"] and [m for m, _ in inventory.calls] == ["list"]
    gate.set()
    inventory.listing_open.set()
    assert [p.available for p in (await page).items] == [7, 7]

    timer.now = 5.0
    inventory.failure = unavailable("inventory")
    err = await refused(catalog.list_products(listing()))
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    inventory.failure = None
    assert len((await catalog.list_products(listing())).items) == 2  # the failure was not kept


def _campaign_json(product: catalog_pb2.Product):
    return json_format.MessageToDict(product.campaign)


async def test_a_product_shows_its_campaign_or_null_and_a_kept_page_flips_to_live(campaigns, inventory, db, timer):
    async def availability(skus):
        return {s: inventory.available(s) for s in skus}

    catalog = Catalog(FakePool(), availability, cache_seconds=1.0, timer=timer, campaigns=campaigns.for_skus)
    servicer = CatalogServicer(catalog, campaigns.clock)
    created = await campaigns.create(new(db, ("EL-0001", 99000, 200), starts_in=0.5, lasts=60), "", "admin")
    # Another campaign of the same SKU right after the first, and one too far ahead to show.
    await campaigns.create(new(db, ("EL-0001", 90000, 10), starts_in=60.5, lasts=60, name="next"), "", "admin")
    await campaigns.create(new(db, ("EL-0002", 9, 1), starts_in=30 * 3600), "", "admin")
    request = catalog_pb2.ListProductsRequest()
    first = await servicer.ListProducts(request, None)
    mouse, keyboard = first.items
    assert mouse.available == 290 and keyboard.available == 49
    assert keyboard.campaign.WhichOneof("kind") == "null_value"
    shown = _campaign_json(mouse)
    assert [datetime.fromisoformat(shown.pop(k).replace("Z", "+00:00")) for k in ("startsAt", "endsAt")] == [
        created.campaign.starts_at, created.campaign.ends_at]
    assert shown == {"campaignId": created.campaign.campaign_id, "name": "12.12", "status": "SCHEDULED",
                     "salePrice": 99000, "quota": 200, "sold": 0, "remaining": 200, "maxPerUser": 2}
    assert await servicer.ListProducts(request, None) is first  # the kept page's message, built once
    db.advance(0.6)
    timer.now = 0.6
    flipped = await servicer.ListProducts(request, None)
    assert _campaign_json(flipped.items[0])["status"] == "LIVE"
    db.advance(60)  # the first has ended, the next is live: shown from the kept page
    timer.now = 0.9
    assert _campaign_json((await servicer.ListProducts(request, None)).items[0])["name"] == "next"
    product = await servicer.GetProduct(catalog_pb2.GetProductRequest(sku="EL-0001"), None)
    assert _campaign_json(product)["status"] == "LIVE"


async def test_the_public_answer_has_every_field_of_the_contract(campaigns, db):
    created = await campaigns.create(new(db, ("EL-0001", 99000, 200)), "", "admin")
    servicer = CampaignServicer(campaigns)
    answer = await servicer.GetPublicCampaign(
        campaigns_pb2.GetPublicCampaignRequest(campaign_id=created.campaign.campaign_id), None)
    shown = json_format.MessageToDict(answer, always_print_fields_with_no_presence=True)
    assert set(shown) == {"campaignId", "name", "status", "startsAt", "endsAt", "serverTime", "items"}
    assert shown["items"] == [{"sku": "EL-0001", "name": "Wireless Mouse", "price": 149000, "salePrice": 99000,
                               "quota": 200, "sold": 0, "remaining": 200, "maxPerUser": 2}]
    assert datetime.fromisoformat(shown["serverTime"].replace("Z", "+00:00")) == db.db()
    listed = json_format.MessageToDict(await servicer.ListPublicCampaigns(
        campaigns_pb2.ListPublicCampaignsRequest(), None), always_print_fields_with_no_presence=True)
    assert [c["campaignId"] for c in listed["campaigns"]] == [created.campaign.campaign_id]
    admin = json_format.MessageToDict(await servicer.GetCampaign(
        campaigns_pb2.GetCampaignRequest(campaign_id=created.campaign.campaign_id), None),
        always_print_fields_with_no_presence=True)
    assert admin["items"][0]["refused"] == {} and admin["items"][0]["name"] == "Wireless Mouse"
    assert "cancelledAt" not in admin


def test_a_null_campaign_is_a_value_that_prints_null():
    product = catalog_pb2.Product(campaign=struct_pb2.Value(null_value=struct_pb2.NULL_VALUE))
    assert json_format.MessageToDict(product)["campaign"] is None
