"""The catalog through Envoy's REST port, checked against the demo data it was loaded from."""

from __future__ import annotations

import re

import pytest

from devstack.demo_data import generate
from devstack.stack import SERVICE_MODULES, http_get, passing_instances
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

DEMO = generate()
BY_SKU = {p.sku: p for p in DEMO}
FIELDS = {"sku", "name", "description", "category", "price", "sales", "available", "campaign"}

SORT_KEYS = {
    "price": lambda p: p.price,
    "sales": lambda p: p.sales,
    "name": lambda p: p.name.lower(),
    # newer products were added fewer seconds before the load
    "newest": lambda p: -p.created_offset_seconds,
}


def expected_order(products, sort_by, sort_dir):
    """The contract's order: by the key in the asked direction, ties by ascending sku."""
    by_sku = sorted(products, key=lambda p: p.sku)
    return sorted(by_sku, key=SORT_KEYS[sort_by], reverse=sort_dir == "desc")


def words(p):
    return re.findall(r"[^\W_]+", f"{p.name} {p.description}".lower())


def matching(*prefixes):
    return [p for p in DEMO if all(any(w.startswith(x) for w in words(p)) for x in prefixes)]


def skus(body):
    return [item["sku"] for item in body["items"]]


def assert_error(resp, status, reason):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"code", "message", "details"}
    assert [d["reason"] for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo")] == [reason]
    return body


def test_category_page_in_ascending_price(http):
    resp = http.get("/catalogs", params=dict(page=2, limit=10, sortBy="price", sortDir="asc", category="electronic"))
    assert resp.status_code == 200
    body = resp.json()
    electronic = [p for p in DEMO if p.category == "electronic"]
    assert skus(body) == [p.sku for p in expected_order(electronic, "price", "asc")[10:20]]
    assert (body["page"], body["limit"], body["total"]) == (2, 10, len(electronic))
    prices = [i["price"] for i in body["items"]]
    assert prices == sorted(prices)


def test_every_field_is_present_typed_and_true_to_the_data(http):
    body = http.get("/catalogs", params=dict(limit=100, sortBy="sales", sortDir="desc")).json()
    assert len(body["items"]) == 100
    for item in body["items"]:
        assert set(item) == FIELDS
        assert all(isinstance(item[f], int) and not isinstance(item[f], bool) for f in ("price", "sales", "available"))
        p = BY_SKU[item["sku"]]
        assert (item["name"], item["category"], item["price"], item["sales"]) == (p.name, p.category, p.price, p.sales)
    # a product with no stock still shows every field, zeros included
    sold_out = next(p for p in DEMO if p.on_hand == 0)
    assert http.get(f"/catalogs/{sold_out.sku}").json()["available"] == 0


@pytest.mark.parametrize("sort_by", sorted(SORT_KEYS))
@pytest.mark.parametrize("sort_dir", ["asc", "desc"])
def test_sorting_is_total_and_stable(http, sort_by, sort_dir):
    want = [p.sku for p in expected_order(DEMO, sort_by, sort_dir)]
    for page in (1, 7):
        body = http.get("/catalogs", params=dict(page=page, limit=100, sortBy=sort_by, sortDir=sort_dir)).json()
        assert skus(body) == want[(page - 1) * 100: page * 100]
        assert body["total"] == len(DEMO)


def test_default_order_is_newest_first(http):
    body = http.get("/catalogs").json()
    assert (body["page"], body["limit"], body["total"]) == (1, 10, len(DEMO))
    assert skus(body) == [p.sku for p in expected_order(DEMO, "newest", "desc")[:10]]


@pytest.mark.parametrize("text, prefixes", [
    ("mous", ("mous",)),
    ("Wireless Mous", ("wireless", "mous")),
    ("COTT", ("cott",)),
    ("stainl", ("stainl",)),
])
def test_search_matches_every_word_as_a_prefix(http, text, prefixes):
    want = matching(*prefixes)
    assert want, "the demo data must have something to find"
    body = http.get("/catalogs", params=dict(search=text, limit=100, sortBy="price", sortDir="asc")).json()
    assert body["total"] == len(want)
    assert skus(body) == [p.sku for p in expected_order(want, "price", "asc")][:100]


def test_search_finds_wireless_mouse(http):
    names = [i["name"] for i in http.get("/catalogs", params=dict(search="mous", limit=100)).json()["items"]]
    assert any("Wireless Mouse" in n for n in names)


def test_filters_combine_and_total_counts_all_matches(http):
    want = [p for p in matching("wireless") if p.category == "electronic"]
    body = http.get("/catalogs", params=dict(search="wireless", category="electronic", limit=5)).json()
    assert body["total"] == len(want) > 5
    assert len(body["items"]) == 5
    assert {i["category"] for i in body["items"]} == {"electronic"}


def test_no_match_and_past_the_end_are_empty_pages(http):
    body = http.get("/catalogs", params=dict(search="zzzqqqxxx")).json()
    assert body == {"items": [], "page": 1, "limit": 10, "total": 0}
    body = http.get("/catalogs", params=dict(page=1000, limit=100)).json()
    assert body["items"] == [] and body["total"] == len(DEMO)


def test_one_product_has_the_item_shape(http):
    p = DEMO[0]
    resp = http.get(f"/catalogs/{p.sku}")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == FIELDS
    assert (body["sku"], body["name"], body["description"], body["price"]) == (p.sku, p.name, p.description, p.price)
    assert body["available"] == p.on_hand


def test_unknown_sku_is_404_product_not_found(http):
    body = assert_error(http.get("/catalogs/NO-SUCH-SKU"), 404, "PRODUCT_NOT_FOUND")
    assert body["code"] == 5


async def test_available_is_read_live_from_inventory(http, suite):
    p = next(p for p in DEMO if p.on_hand >= 10 and p.category == "books")
    async with suite.channel("inventory") as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        (held,) = (await stub.CreateHolds(inventory_pb2.CreateHoldsRequest(
            owner="cart:catalog-test", lines=[inventory_pb2.HoldLine(sku=p.sku, qty=p.on_hand - 3)],
            ttl_seconds=60))).holds
        try:
            assert http.get(f"/catalogs/{p.sku}").json()["available"] == 3
            listed = http.get("/catalogs", params=dict(category="books", limit=100, sortBy="price")).json()
            assert {i["sku"]: i["available"] for i in listed["items"]}.get(p.sku, 3) == 3
        finally:
            await stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[held.hold_id]))
    assert http.get(f"/catalogs/{p.sku}").json()["available"] == p.on_hand


@pytest.mark.parametrize("params, field", [
    ({"page": "0"}, "page"),
    ({"page": "-1"}, "page"),
    ({"limit": "0"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"sortBy": "popularity"}, "sortBy"),
    ({"sortDir": "sideways"}, "sortDir"),
    ({"category": "no-such-category"}, "category"),
    ({"category": "Bad Slug!"}, "category"),
    ({"search": "&&& !!!"}, "search"),
])
def test_bad_values_are_400_naming_the_field(http, params, field):
    body = assert_error(http.get("/catalogs", params=params), 400, "INVALID_ARGUMENT")
    assert body["details"][0]["metadata"] == {"field": field}


@pytest.mark.parametrize("query", ["page=abc", "limit=1.5", "page=99999999999", "colour=red", "page=1&page=2x"])
def test_malformed_or_unknown_query_parameters_are_400_from_the_gateway(http, query):
    resp = http.get(f"/catalogs?{query}")
    assert_error(resp, 400, "INVALID_ARGUMENT")


def test_unknown_paths_and_internal_rpcs_are_not_reachable(http, suite):
    assert_error(http.get("/nothing-here", headers=suite.auth("alice")), 404, "ROUTE_NOT_FOUND")
    resp = http.post("/shop.inventory.v1.InventoryService/GetAvailability", json={"skus": ["EL-0001"]},
                     headers=suite.auth("alice"))
    assert resp.status_code == 404
    grpc_resp = http.post("/shop.catalog.v1.CatalogService/BatchGetProducts", content=b"\x00\x00\x00\x00\x00",
                          headers={"content-type": "application/grpc", **suite.auth("alice")})
    assert grpc_resp.status_code == 404 or grpc_resp.headers.get("grpc-status") not in (None, "0")


def test_consul_lists_every_service_with_a_passing_grpc_check(suite):
    for service in SERVICE_MODULES:
        entries = passing_instances(suite.ports, service)
        assert entries, service
        checks = [c for e in entries for c in e["Checks"] if c["ServiceName"] == service]
        assert checks and all(c["Type"] == "grpc" and c["Status"] == "passing" for c in checks)
    status, page = http_get(f"http://{suite.ports.consul_addr}/ui/")
    assert status == 200 and b"<html" in page.lower()
