"""The merchant's product management against real Postgres, Consul, a catalog and an inventory process: each
malformed field refused by name with nothing written, creates once (per SKU, per idempotency key), batches all or
nothing with the bad row's index, every change recorded with its actor and what it was before, unlisted products
gone from the listing, search and product page but still read by the cart, and concurrent batches exact."""

import asyncio
import time

import grpc
import psycopg
import pytest

from devstack.postgres import create_database, dsn_for
from devstack.prepare import prepare
from devstack.procs import Proc, start_consul, wait_up
from devstack.stack import passing_instances, service_process
from shop.catalog.v1 import catalog_admin_pb2 as admin_pb2, catalog_admin_pb2_grpc as admin_grpc
from shop.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop_runtime.errors import error_info

ADMIN = "admin-alice"


def as_user(user=ADMIN, key=None):
    md = [("x-shop-user-id", user)]
    if key:
        md.append(("idempotency-key", key))
    return md


@pytest.fixture(scope="module")
def catalog_dsn(pg_admin_dsn):
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    asyncio.run(prepare(dsn, count=200))
    return dsn


@pytest.fixture(scope="module")
def address(catalog_dsn, log_dir):
    """A catalog (keeping no answers, so a read shows the last write) and an inventory, on a database of their
    own with 200 demo products."""
    ports, consul = start_consul(log_dir)
    procs = []
    try:
        procs = [Proc(service_process("catalog", ports, catalog_dsn, port=0, name="catalog-admin",
                                      CATALOG_CACHE_SECONDS="0"), log_dir),
                 Proc(service_process("inventory", ports, catalog_dsn, port=0, name="inventory-for-admin"), log_dir)]
        wait_up(procs, lambda: passing_instances(ports, "inventory") and passing_instances(ports, "catalog"),
                30, "catalog and inventory")
        (instance,) = passing_instances(ports, "catalog")
        yield f"127.0.0.1:{instance['Service']['Port']}"
    finally:
        for p in procs:
            p.stop()
        consul.stop()


@pytest.fixture(scope="module")
def cached_address(catalog_dsn, log_dir):
    """A catalog keeping answers as by default (CATALOG_CACHE_SECONDS 1 s, counts 30 s) and an inventory, on the
    same database, found through a Consul of their own."""
    ports, consul = start_consul(log_dir)
    procs = []
    try:
        procs = [Proc(service_process("catalog", ports, catalog_dsn, port=0, name="catalog-admin-cached"), log_dir),
                 Proc(service_process("inventory", ports, catalog_dsn, port=0, name="inventory-for-admin-cached"),
                      log_dir)]
        wait_up(procs, lambda: passing_instances(ports, "inventory") and passing_instances(ports, "catalog"),
                30, "catalog and inventory")
        (instance,) = passing_instances(ports, "catalog")
        yield f"127.0.0.1:{instance['Service']['Port']}"
    finally:
        for p in procs:
            p.stop()
        consul.stop()


@pytest.fixture
async def stubs(address):
    async with grpc.aio.insecure_channel(address) as channel:
        yield admin_grpc.CatalogAdminServiceStub(channel), catalog_pb2_grpc.CatalogServiceStub(channel)


def product(sku, **kw):
    fields = {"name": f"Product {sku}", "description": "made for the admin tests", "category": "admin-tests",
              "price": 12_500} | kw
    return admin_pb2.CreateProductRequest(sku=sku, **fields)


async def refusal(call):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    info = error_info(caught.value)
    return caught.value.code(), info.reason, dict(info.metadata)


async def rows(dsn, query, *params):
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await (await conn.execute(query, params or None)).fetchall()


BAD_FIELDS = [
    ({"sku": ""}, "sku"), ({"sku": "A" * 65}, "sku"), ({"sku": "HAS SPACE"}, "sku"), ({"sku": "Ünicode"}, "sku"),
    ({"sku": "NUL\x00"}, "sku"), ({"name": ""}, "name"), ({"name": "   "}, "name"), ({"name": "n" * 201}, "name"),
    ({"name": "nul\x00"}, "name"), ({"description": "d" * 5001}, "description"),
    ({"description": "nul\x00"}, "description"), ({"category": ""}, "category"), ({"category": "Toys"}, "category"),
    ({"category": "c" * 65}, "category"), ({"category": "with_underscore"}, "category"), ({"price": 0}, "price"),
    ({"price": -1}, "price"), ({"price": 2_000_000_001}, "price"),
]


@pytest.mark.parametrize("bad, field", BAD_FIELDS)
async def test_a_malformed_field_is_refused_by_name_and_nothing_is_written(stubs, catalog_dsn, bad, field):
    admin, _ = stubs
    fields = {"sku": "ADM-BAD-1"} | bad
    sku = fields.pop("sku")
    code, reason, md = await refusal(admin.CreateProduct(product(sku, **fields), metadata=as_user(), timeout=10))
    assert (code, reason, md) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {"field": field})
    assert await rows(catalog_dsn, "SELECT 1 FROM catalog.products WHERE sku = 'ADM-BAD-1'") == []
    assert await rows(catalog_dsn, "SELECT 1 FROM catalog.categories WHERE slug = %s", fields.get("category")) == []


async def test_a_create_shows_like_the_product_page_is_recorded_and_refused_the_second_time(stubs, catalog_dsn):
    admin, catalog = stubs
    made = await admin.CreateProduct(product("ADM_new.1", category="brand-new-cat", price=149_000),
                                     metadata=as_user(), timeout=10)
    page = await catalog.GetProduct(catalog_pb2.GetProductRequest(sku="ADM_new.1"), timeout=10)
    assert made == page
    assert (page.sales, page.available, page.price, page.category) == (0, 0, 149_000, "brand-new-cat")
    listing = await catalog.ListProducts(catalog_pb2.ListProductsRequest(category="brand-new-cat"), timeout=10)
    assert [p.sku for p in listing.items] == ["ADM_new.1"]

    code, reason, md = await refusal(admin.CreateProduct(product("ADM_new.1", name="Another"), metadata=as_user("bob"),
                                                         timeout=10))
    assert (code, reason, md) == (grpc.StatusCode.ALREADY_EXISTS, "PRODUCT_EXISTS", {"sku": "ADM_new.1"})
    assert (await catalog.GetProduct(catalog_pb2.GetProductRequest(sku="ADM_new.1"), timeout=10)).name == \
        "Product ADM_new.1"

    history = await admin.ListProductChanges(admin_pb2.ListProductChangesRequest(sku="ADM_new.1"), timeout=10)
    assert history.total == 1
    (change,) = history.changes
    assert (change.actor, change.action, change.HasField("before")) == (ADMIN, "create", False)
    assert change.after == admin_pb2.ProductFields(name="Product ADM_new.1", description="made for the admin tests",
                                                   category="brand-new-cat", price=149_000, listed=True)


async def test_an_idempotency_key_answers_the_first_call_again_and_refuses_another_body(stubs, catalog_dsn):
    admin, _ = stubs
    first = await admin.CreateProduct(product("ADM-IDEM-1"), metadata=as_user(key="k-1"), timeout=10)
    again = await admin.CreateProduct(product("ADM-IDEM-1"), metadata=as_user(key="k-1"), timeout=10)
    assert again == first
    code, reason, _ = await refusal(admin.CreateProduct(product("ADM-IDEM-1", price=1), metadata=as_user(key="k-1"),
                                                        timeout=10))
    assert (code, reason) == (grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_REUSED")
    # Another admin's key of the same text is another key: a create of an existing SKU.
    code, reason, _ = await refusal(admin.CreateProduct(product("ADM-IDEM-1"), metadata=as_user("bob", key="k-1"),
                                                        timeout=10))
    assert reason == "PRODUCT_EXISTS"
    assert await rows(catalog_dsn, "SELECT count(*) FROM catalog.product_changes WHERE sku = 'ADM-IDEM-1'") == [(1,)]


async def test_concurrent_creates_of_one_sku_make_one_product(stubs, catalog_dsn):
    admin, _ = stubs
    outcomes = await asyncio.gather(*(admin.CreateProduct(product("ADM-RACE-1", name=f"Racer {i}"),
                                                          metadata=as_user(f"admin-{i}"), timeout=20)
                                      for i in range(20)), return_exceptions=True)
    made = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [error_info(o).reason for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(made) == 1 and refused == ["PRODUCT_EXISTS"] * 19
    assert await rows(catalog_dsn, "SELECT name FROM catalog.products WHERE sku = 'ADM-RACE-1'") == [(made[0].name,)]
    assert await rows(catalog_dsn, "SELECT count(*) FROM catalog.product_changes WHERE sku = 'ADM-RACE-1'") == [(1,)]


async def test_a_patch_changes_only_what_it_gives_and_records_it_with_what_it_was(stubs, catalog_dsn):
    admin, catalog = stubs
    await admin.CreateProduct(product("ADM-PATCH-1", price=1000), metadata=as_user(), timeout=10)
    changed = await admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku="ADM-PATCH-1", price=2000, category="other-cat"),
                                        metadata=as_user("admin-bob"), timeout=10)
    assert (changed.name, changed.description, changed.price, changed.category) == (
        "Product ADM-PATCH-1", "made for the admin tests", 2000, "other-cat")
    assert (await catalog.GetProduct(catalog_pb2.GetProductRequest(sku="ADM-PATCH-1"), timeout=10)) == changed

    # Only the values it has: nothing written, nothing recorded, the product answered. No field: refused.
    same = await admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku="ADM-PATCH-1", price=2000, listed=True),
                                     metadata=as_user(), timeout=10)
    assert same == changed
    code, reason, md = await refusal(admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku="ADM-PATCH-1"),
                                                         metadata=as_user(), timeout=10))
    assert (code, md) == (grpc.StatusCode.INVALID_ARGUMENT, {"field": "body"})
    history = await admin.ListProductChanges(admin_pb2.ListProductChangesRequest(sku="ADM-PATCH-1"), timeout=10)
    assert [(c.action, c.actor) for c in history.changes] == [("update", "admin-bob"), ("create", ADMIN)]
    newest = history.changes[0]
    assert (newest.before.price, newest.before.category, newest.after.price, newest.after.category) == (
        1000, "admin-tests", 2000, "other-cat")
    assert newest.changed_at.ToDatetime() >= history.changes[1].changed_at.ToDatetime()

    code, reason, md = await refusal(admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku="ADM-PATCH-1", price=0),
                                                         metadata=as_user(), timeout=10))
    assert (code, reason, md) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {"field": "price"})
    for sku in ("ADM-NO-SUCH", "bad sku"):
        code, reason, md = await refusal(admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku=sku, price=5),
                                                             metadata=as_user(), timeout=10))
        assert (code, reason, md) == (grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND", {"sku": sku})
    assert (await admin.ListProductChanges(admin_pb2.ListProductChangesRequest(sku="ADM-PATCH-1"), timeout=10)).total == 2


async def test_an_unlisted_product_leaves_listing_search_and_page_but_the_cart_still_reads_it(stubs, catalog_dsn):
    admin, catalog = stubs
    await admin.CreateProduct(product("ADM-HIDE-1", name="Zyzzyva lamp", category="hide-cat"), metadata=as_user(),
                              timeout=10)

    async def shown():
        by_search = await catalog.ListProducts(catalog_pb2.ListProductsRequest(search="zyzzyva"), timeout=10)
        by_category = await catalog.ListProducts(catalog_pb2.ListProductsRequest(category="hide-cat"), timeout=10)
        return [p.sku for p in by_search.items], by_search.total, [p.sku for p in by_category.items], by_category.total

    assert await shown() == (["ADM-HIDE-1"], 1, ["ADM-HIDE-1"], 1)
    hidden = await admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku="ADM-HIDE-1", listed=False),
                                       metadata=as_user(), timeout=10)
    assert hidden.sku == "ADM-HIDE-1"  # the admin's answer shows it whatever its state
    assert await shown() == ([], 0, [], 0)
    code, reason, _ = await refusal(catalog.GetProduct(catalog_pb2.GetProductRequest(sku="ADM-HIDE-1"), timeout=10))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND")
    batch = await catalog.BatchGetProducts(catalog_pb2.BatchGetProductsRequest(skus=["ADM-HIDE-1"]), timeout=10)
    assert [p.sku for p in batch.products] == ["ADM-HIDE-1"] and list(batch.unlisted_skus) == ["ADM-HIDE-1"]
    # A batch upsert of it changes its fields, not its state.
    await admin.BatchUpsertProducts(admin_pb2.BatchUpsertProductsRequest(
        products=[product("ADM-HIDE-1", name="Zyzzyva lamp 2", category="hide-cat")]), metadata=as_user(), timeout=10)
    assert await shown() == ([], 0, [], 0)

    await admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku="ADM-HIDE-1", listed=True), metadata=as_user(),
                              timeout=10)
    assert await shown() == (["ADM-HIDE-1"], 1, ["ADM-HIDE-1"], 1)
    assert (await catalog.GetProduct(catalog_pb2.GetProductRequest(sku="ADM-HIDE-1"), timeout=10)).name == \
        "Zyzzyva lamp 2"
    batch = await catalog.BatchGetProducts(catalog_pb2.BatchGetProductsRequest(skus=["ADM-HIDE-1"]), timeout=10)
    assert list(batch.unlisted_skus) == []
    history = await admin.ListProductChanges(admin_pb2.ListProductChangesRequest(sku="ADM-HIDE-1", limit=2), timeout=10)
    assert history.total == 4 and [(c.before.listed, c.after.listed) for c in history.changes] == [
        (False, True), (False, False)]


async def test_a_batch_is_all_or_nothing_and_names_its_first_bad_row(stubs, catalog_dsn):
    admin, _ = stubs
    good = [product(f"ADM-B-{i}") for i in range(5)]
    for bad, index, field in ((product("ADM-B-X", price=0), 3, "price"), (product("ADM-B-1"), 3, "sku"),
                              (product("ADM-B-X", category="Bad"), 3, "category")):
        batch = [*good[:3], bad, good[4]]
        code, reason, md = await refusal(admin.BatchUpsertProducts(admin_pb2.BatchUpsertProductsRequest(
            products=batch), metadata=as_user(), timeout=10))
        assert (code, reason, md) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                                      {"index": str(index), "field": field})
    for count in (0, 1001):
        code, reason, md = await refusal(admin.BatchUpsertProducts(admin_pb2.BatchUpsertProductsRequest(
            products=[product(f"ADM-C-{i}") for i in range(count)]), metadata=as_user(), timeout=10))
        assert md == {"field": "products"}
    assert await rows(catalog_dsn, "SELECT sku FROM catalog.products WHERE sku LIKE 'ADM-B-%' OR sku LIKE 'ADM-C-%'") == []

    done = await admin.BatchUpsertProducts(admin_pb2.BatchUpsertProductsRequest(products=good[:3]),
                                           metadata=as_user(), timeout=10)
    assert (done.created, done.updated) == (3, 0)
    # Again with one changed and two more: the two created, the three updated, one change recorded for the third.
    again = [*good[:2], product("ADM-B-2", price=99), *good[3:]]
    done = await admin.BatchUpsertProducts(admin_pb2.BatchUpsertProductsRequest(products=again), metadata=as_user(),
                                           timeout=10)
    assert (done.created, done.updated) == (2, 3)
    done = await admin.BatchUpsertProducts(admin_pb2.BatchUpsertProductsRequest(products=again), metadata=as_user(),
                                           timeout=10)
    assert (done.created, done.updated) == (0, 5)
    assert await rows(catalog_dsn, "SELECT sku, action, before->>'price', after->>'price' FROM catalog.product_changes"
                                   " WHERE sku LIKE 'ADM-B-%' ORDER BY id") == [
        ("ADM-B-0", "upsert", None, "12500"), ("ADM-B-1", "upsert", None, "12500"),
        ("ADM-B-2", "upsert", None, "12500"), ("ADM-B-2", "upsert", "12500", "99"),
        ("ADM-B-3", "upsert", None, "12500"), ("ADM-B-4", "upsert", None, "12500")]
    assert await rows(catalog_dsn, "SELECT sales, listed FROM catalog.products WHERE sku LIKE 'ADM-B-%'") == [(0, True)] * 5


async def test_concurrent_overlapping_batches_create_each_product_once(stubs, catalog_dsn):
    admin, _ = stubs
    skus = [f"ADM-CONC-{i:04d}" for i in range(600)]
    # Eight batches of 300 SKUs each, overlapping, sent in different orders at once.
    batches = [[product(s, price=100 + b) for s in (skus[b * 50:b * 50 + 300] if b % 2 else
                                                    list(reversed(skus[b * 50:b * 50 + 300])))] for b in range(7)]
    answers = await asyncio.gather(*(admin.BatchUpsertProducts(admin_pb2.BatchUpsertProductsRequest(products=b),
                                                               metadata=as_user(f"admin-{i}"), timeout=30)
                                     for i, b in enumerate(batches)))
    covered = {p.sku for b in batches for p in b}
    assert sum(a.created for a in answers) == len(covered)
    assert sum(a.created + a.updated for a in answers) == sum(len(b) for b in batches)
    assert await rows(catalog_dsn, "SELECT count(*) FROM catalog.products WHERE sku LIKE 'ADM-CONC-%'") == [
        (len(covered),)]
    # Each product's creation recorded once, with no before; each change after it with the price it replaced.
    assert await rows(catalog_dsn, "SELECT count(*) FROM catalog.product_changes WHERE sku LIKE 'ADM-CONC-%'"
                                   " AND before IS NULL") == [(len(covered),)]
    chained = await rows(catalog_dsn, """
        SELECT count(*) FROM (SELECT before, lag(after) OVER (PARTITION BY sku ORDER BY id) AS prev
                              FROM catalog.product_changes WHERE sku LIKE 'ADM-CONC-%') c
        WHERE before IS NOT NULL AND before IS DISTINCT FROM prev""")
    assert chained == [(0,)]


async def test_the_history_is_paged_newest_first_and_needs_a_known_product(stubs):
    admin, _ = stubs
    await admin.CreateProduct(product("ADM-HIST-1", price=1), metadata=as_user(), timeout=10)
    for price in range(2, 8):
        await admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku="ADM-HIST-1", price=price), metadata=as_user(),
                                  timeout=10)
    pages = [await admin.ListProductChanges(admin_pb2.ListProductChangesRequest(sku="ADM-HIST-1", page=n, limit=3),
                                            timeout=10) for n in (1, 2, 3)]
    assert [[c.after.price for c in p.changes] for p in pages] == [[7, 6, 5], [4, 3, 2], [1]]
    assert {(p.total, p.limit) for p in pages} == {(7, 3)}
    code, reason, md = await refusal(admin.ListProductChanges(admin_pb2.ListProductChangesRequest(sku="ADM-NONE"),
                                                              timeout=10))
    assert (code, reason, md) == (grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND", {"sku": "ADM-NONE"})
    code, reason, md = await refusal(admin.ListProductChanges(admin_pb2.ListProductChangesRequest(
        sku="ADM-HIST-1", limit=101), timeout=10))
    assert md == {"field": "limit"}


async def test_a_change_needs_a_user(stubs):
    admin, _ = stubs
    code, reason, _ = await refusal(admin.CreateProduct(product("ADM-ANON-1"), timeout=10))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


# The storefront's staleness of pages and products (CATALOG_CACHE_SECONDS' default), and what a loaded machine may add.
CACHE_SECONDS, SLACK = 1.0, 0.5


async def shown_within(check, what: str) -> float:
    """Polls `check` until it is true; the seconds that took, which must stay within the documented staleness."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < CACHE_SECONDS + SLACK, f"{what} not shown within {CACHE_SECONDS} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_changes_show_through_the_default_cache_within_its_second(cached_address):
    async with grpc.aio.insecure_channel(cached_address) as channel:
        admin = admin_grpc.CatalogAdminServiceStub(channel)
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        word = "xylofon"
        search = catalog_pb2.ListProductsRequest(search=word, sort_by="newest")
        assert (await catalog.ListProducts(search, timeout=10)).total == 0  # the page and its count now kept

        await admin.CreateProduct(product("ADM-CACHE-1", name=f"Cached {word}"), metadata=as_user(), timeout=10)

        async def listed() -> bool:
            return [p.sku for p in (await catalog.ListProducts(search, timeout=10)).items] == ["ADM-CACHE-1"]

        # The kept count (0, for up to 30 s) does not keep the new product off the page.
        await shown_within(listed, "a created product in a search kept as empty")
        await catalog.GetProduct(catalog_pb2.GetProductRequest(sku="ADM-CACHE-1"), timeout=10)  # now kept

        await admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku="ADM-CACHE-1", price=777), metadata=as_user(),
                                  timeout=10)

        async def repriced() -> bool:
            return (await catalog.GetProduct(catalog_pb2.GetProductRequest(sku="ADM-CACHE-1"), timeout=10)).price == 777

        await shown_within(repriced, "a new price")
        await admin.UpdateProduct(admin_pb2.UpdateProductRequest(sku="ADM-CACHE-1", listed=False), metadata=as_user(),
                                  timeout=10)

        async def gone() -> bool:
            try:
                await catalog.GetProduct(catalog_pb2.GetProductRequest(sku="ADM-CACHE-1"), timeout=10)
            except grpc.aio.AioRpcError as err:
                return err.code() == grpc.StatusCode.NOT_FOUND
            return False

        async def unlisted() -> bool:
            return not (await catalog.ListProducts(search, timeout=10)).items

        await shown_within(gone, "an unlisted product's 404")
        await shown_within(unlisted, "an unlisted product's absence from search")
