"""The catalog's read rules with its cache: one read per crowd, staleness bounded by the TTL, refusals never kept,
counts shared across orders and pages, the BASIC batch without inventory; with fakes of the repository and inventory."""

import asyncio
import contextlib

import grpc
import pytest

from catalog_svc import repository
from catalog_svc.model import ProductRow
from catalog_svc.query import parse_list_query
from catalog_svc.service import Catalog
from shop_runtime.errors import ServiceError

ROWS = {sku: ProductRow(sku, f"Product {sku}", "", "toys", 1000 + i, 0)
        for i, sku in enumerate(("TO-0001", "TO-0002", "TO-0003"))}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakePool:
    """Hands out a placeholder connection; the fake repository below never looks at it."""

    @contextlib.asynccontextmanager
    async def connection(self):
        yield object()


class FakeStore:
    """The repository's reads and inventory's availability, counted, over in-memory rows and stock."""

    def __init__(self) -> None:
        self.stock = {sku: 5 for sku in ROWS}
        self.reads: list[str] = []
        self.asked: list[list[str]] = []
        self.inventory_open = asyncio.Event()
        self.inventory_open.set()

    async def get_products(self, conn, skus, *, unlisted=False):
        self.reads.append("get")
        await asyncio.sleep(0)
        return [ROWS[s] for s in skus if s in ROWS]

    async def category_exists(self, conn, slug):
        self.reads.append("category")
        return slug == "toys"

    async def count_products(self, conn, query):
        self.reads.append("count")
        return len(ROWS)

    async def list_page(self, conn, query, total):
        self.reads.append("page")
        rows = sorted(ROWS.values(), key=lambda r: r.price, reverse=query.descending)
        return rows[query.offset:query.offset + query.limit]

    async def availability(self, skus):
        self.asked.append(list(skus))
        await self.inventory_open.wait()
        return {s: self.stock[s] for s in skus}


@pytest.fixture
def store(monkeypatch):
    fake = FakeStore()
    for name in ("get_products", "category_exists", "count_products", "list_page"):
        monkeypatch.setattr(repository, name, getattr(fake, name))
    return fake


def listing(**kw):
    return parse_list_query(page=kw.get("page"), limit=kw.get("limit"), sort_by=kw.get("sort_by", "price"),
                            sort_dir=kw.get("sort_dir", ""), category=kw.get("category", ""), search="")


async def test_a_crowd_on_one_product_costs_one_read_and_one_inventory_call(store):
    catalog = Catalog(FakePool(), store.availability, cache_seconds=1.0, timer=Clock())
    store.inventory_open.clear()
    crowd = [asyncio.create_task(catalog.get_product("TO-0001")) for _ in range(500)]
    for _ in range(5):
        await asyncio.sleep(0)
    store.inventory_open.set()
    answers = await asyncio.gather(*crowd)
    assert {(a.row.sku, a.available) for a in answers} == {("TO-0001", 5)}
    assert store.reads == ["get"] and store.asked == [["TO-0001"]]


async def test_available_follows_stock_once_the_ttl_has_passed(store):
    clock = Clock()
    catalog = Catalog(FakePool(), store.availability, cache_seconds=1.0, timer=clock)
    assert (await catalog.get_product("TO-0001")).available == 5
    store.stock["TO-0001"] = 2
    clock.now = 0.9
    assert (await catalog.get_product("TO-0001")).available == 5  # within the TTL: the kept answer
    clock.now = 1.0
    assert (await catalog.get_product("TO-0001")).available == 2


async def test_without_a_cache_every_read_asks(store):
    catalog = Catalog(FakePool(), store.availability, cache_seconds=0.0, timer=Clock())
    await asyncio.gather(*(catalog.get_product("TO-0001") for _ in range(3)))
    store.stock["TO-0001"] = 1
    assert (await catalog.get_product("TO-0001")).available == 1
    assert len(store.asked) == 4


async def test_an_unknown_product_is_refused_every_time_and_never_kept(store):
    catalog = Catalog(FakePool(), store.availability, cache_seconds=60.0, timer=Clock())
    for _ in range(2):
        with pytest.raises(ServiceError) as err:
            await catalog.get_product("NO-SUCH")
        assert (err.value.code, err.value.reason) == (grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND")
    assert store.reads == ["get", "get"]


async def test_listings_of_one_filter_share_its_count_across_orders_and_pages(store):
    clock = Clock()
    catalog = Catalog(FakePool(), store.availability, cache_seconds=1.0, timer=clock)
    queries = [listing(category="toys"), listing(category="toys", sort_dir="asc"), listing(category="toys", page=2)]
    pages = [await catalog.list_products(q) for q in queries]
    assert [p.total for p in pages] == [3, 3, 3]
    assert [p.items[0].row.sku for p in pages[:2]] == ["TO-0003", "TO-0001"]
    assert pages[2].items == []
    assert store.reads.count("count") == 1 and store.reads.count("category") == 1
    await catalog.list_products(queries[0])
    assert store.reads.count("page") == 2  # the third page was past the end: no page read at all
    clock.now = 1.0
    await catalog.list_products(queries[0])
    assert store.reads.count("count") == 2 and store.reads.count("page") == 3


async def test_a_count_outlives_the_pages_but_not_its_own_life(store):
    clock = Clock()
    catalog = Catalog(FakePool(), store.availability, cache_seconds=1.0, count_seconds=30.0, timer=clock)
    await catalog.list_products(listing(category="toys"))
    store.stock["TO-0003"] = 0
    clock.now = 1.0  # the page is gone; the count is not
    page = await catalog.list_products(listing(category="toys"))
    assert page.items[0].available == 0 and page.total == 3
    assert store.reads.count("page") == 2 and store.reads.count("count") == 1
    clock.now = 30.0
    await catalog.list_products(listing(category="toys"))
    assert store.reads.count("count") == 2


async def test_without_a_cache_counts_are_not_kept_either(store):
    catalog = Catalog(FakePool(), store.availability, cache_seconds=0.0, count_seconds=30.0, timer=Clock())
    for _ in range(2):
        await catalog.list_products(listing(category="toys"))
    assert store.reads.count("count") == 2


async def test_an_unknown_category_is_refused_and_never_kept(store):
    catalog = Catalog(FakePool(), store.availability, cache_seconds=60.0, timer=Clock())
    for _ in range(2):
        with pytest.raises(ServiceError) as err:
            await catalog.list_products(listing(category="nope"))
        assert err.value.reason == "INVALID_ARGUMENT" and err.value.metadata == {"field": "category"}
    assert store.reads == ["category", "category"]


async def test_the_basic_batch_never_asks_inventory_and_is_never_kept(store):
    catalog = Catalog(FakePool(), store.availability, cache_seconds=60.0, timer=Clock())
    store.inventory_open.clear()  # an inventory that never answers
    basic = await asyncio.wait_for(catalog.batch_get(["TO-0001", "TO-0002", "TO-0001"], with_availability=False), 1)
    assert sorted((p.row.sku, p.row.price, p.available) for p in basic) == [("TO-0001", 1000, 0), ("TO-0002", 1001, 0)]
    assert store.asked == []
    await catalog.batch_get(["TO-0001"], with_availability=False)
    assert store.reads == ["get", "get"]
    store.inventory_open.set()
    full = await catalog.batch_get(["TO-0001"], with_availability=True)
    assert [(p.row.sku, p.available) for p in full] == [("TO-0001", 5)]
    assert store.asked == [["TO-0001"]]
