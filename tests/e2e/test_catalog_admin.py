"""The merchant's product management through Envoy's REST port: admin only, each refusal with its reason and
metadata and nothing changed by it, bad input 400 (never 5xx) for every field, a created product shown by the
storefront, an unlisted product gone from it while a cart that holds it still checks out and pays, and `make import`
interrupted and run again loading each product exactly once.

Products made here are unlisted when their test ends (listed products are what the other e2e tests count)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from devstack import import_catalog
from tests.e2e.shop_client import Shopper, reason

# The cart keeps names, prices and the listed flag this long (CART_PRICE_CACHE_SECONDS' default).
CART_KEEPS = 1.0
# The storefront's staleness of a page or product (CATALOG_CACHE_SECONDS: 0 in the e2e suite, 1 s by default).
CATALOG_KEEPS = 1.0


@pytest.fixture
def admin(suite):
    return suite.auth("merchant-mia", "admin")


@pytest.fixture
def made(suite):
    """The SKUs a test makes (it appends them), unlisted afterwards."""
    skus: list[str] = []
    yield skus
    with psycopg.connect(suite.dsn) as conn:
        conn.execute("UPDATE catalog.products SET listed = false WHERE sku = ANY(%s)", (skus,))


def new_sku() -> str:
    """A SKU of its own, with each of the characters a SKU may have beyond letters, digits and '-'."""
    tail = uuid.uuid4().hex
    return f"E2E-ADM_{tail[:6]}.{tail[6:10]}"


def body(sku, **kw):
    return {"sku": sku, "name": "Merchant Lamp", "description": "a lamp made by the e2e tests", "category": "e2e-admin",
            "price": 149_000} | kw


def details(resp) -> dict:
    return resp.json()["details"][0]


def db_product(suite, sku):
    with psycopg.connect(suite.dsn) as conn:
        return conn.execute("SELECT name, description, category, price, listed FROM catalog.products WHERE sku = %s",
                            (sku,)).fetchone()


def history_count(suite, sku):
    with psycopg.connect(suite.dsn) as conn:
        return conn.execute("SELECT count(*) FROM catalog.product_changes WHERE sku = %s", (sku,)).fetchone()[0]


ROUTES = [("post", "/admin/products", body("E2E-ADM-AUTH")), ("patch", "/admin/products/EL-0001", {"price": 5}),
          ("post", "/admin/products:batchUpsert", {"products": [body("E2E-ADM-AUTH")]}),
          ("get", "/admin/products/EL-0001/changes", None)]


@pytest.mark.parametrize("verb, path, payload", ROUTES)
def test_only_admins_may_call_the_routes(http, suite, verb, path, payload):
    before = db_product(suite, "EL-0001")
    for headers, status in (({}, 401), (suite.auth("shopper-sam"), 403)):
        resp = http.request(verb.upper(), path, json=payload, headers=headers)
        assert resp.status_code == status, (path, resp.text)
    assert db_product(suite, "E2E-ADM-AUTH") is None and db_product(suite, "EL-0001") == before


def test_a_created_product_is_shown_and_a_second_create_is_refused(http, suite, admin, made):
    sku = new_sku()
    made.append(sku)
    resp = http.post("/admin/products", json=body(sku), headers=admin)
    assert resp.status_code == 200, resp.text
    created = resp.json()
    assert created == {"sku": sku, "name": "Merchant Lamp", "description": "a lamp made by the e2e tests",
                       "category": "e2e-admin", "price": 149_000, "sales": 0, "available": 0, "campaign": None}
    assert http.get(f"/catalogs/{sku}").json() == created

    deadline = time.monotonic() + CATALOG_KEEPS + 1
    while sku not in [p["sku"] for p in http.get("/catalogs", params={"category": "e2e-admin", "limit": 100,
                                                                        "sortBy": "newest"}).json()["items"]]:
        assert time.monotonic() < deadline, "the new product never showed in GET /catalogs"
        time.sleep(0.1)

    again = http.post("/admin/products", json=body(sku, name="Other", price=1), headers=admin)
    assert again.status_code == 409 and reason(again) == "PRODUCT_EXISTS"
    assert details(again)["metadata"] == {"sku": sku}
    assert db_product(suite, sku) == ("Merchant Lamp", "a lamp made by the e2e tests", "e2e-admin", 149_000, True)

    changes = http.get(f"/admin/products/{sku}/changes", headers=admin).json()
    assert changes["total"] == 1 and changes["page"] == 1
    (change,) = changes["changes"]
    assert (change["actor"], change["action"], change["after"]["price"], "before" in change) == (
        "merchant-mia", "create", 149_000, False)


def test_an_idempotency_key_replays_the_first_answer(http, suite, admin, made):
    sku = new_sku()
    made.append(sku)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = http.post("/admin/products", json=body(sku), headers=admin | key)
    again = http.post("/admin/products", json=body(sku), headers=admin | key)
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    other = http.post("/admin/products", json=body(sku, price=1), headers=admin | key)
    assert other.status_code == 409 and reason(other) == "IDEMPOTENCY_KEY_REUSED"
    assert db_product(suite, sku)[3] == 149_000 and history_count(suite, sku) == 1


CREATE_BAD = [
    ({"price": "abc"}, None), ({"price": 1.5}, None), ({"price": 3_000_000_000}, None), ({"sku": 5}, None),
    ({"name": ["x"]}, None), ({"description": {"a": 1}}, None), ({"category": True}, None),
    ({"price": 0}, "price"), ({"price": -1}, "price"), ({"price": 2_000_000_001}, "price"), ({"sku": ""}, "sku"),
    ({"sku": "a/b"}, "sku"), ({"sku": "x" * 65}, "sku"), ({"name": ""}, "name"), ({"name": "x" * 201}, "name"),
    ({"description": "x" * 5001}, "description"), ({"category": "Not A Slug"}, "category"), ({"category": ""}, "category"),
]


@pytest.mark.parametrize("bad, field", CREATE_BAD)
def test_a_bad_create_is_400_and_creates_nothing(http, suite, admin, bad, field):
    sku = new_sku()
    payload = body(sku) | bad
    resp = http.post("/admin/products", content=json.dumps(payload), headers=admin | {"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert details(resp)["reason"] == "INVALID_ARGUMENT"
    if field:
        assert details(resp)["metadata"] == {"field": field}
    assert db_product(suite, str(payload["sku"])) is None


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'"text"', b'{"products": "x"}',
                                 b'{"products": [{"price": "x"}]}', b'{"products": [5]}'])
def test_a_malformed_batch_body_is_400(http, admin, raw):
    resp = http.post("/admin/products:batchUpsert", content=raw, headers=admin | {"content-type": "application/json"})
    assert resp.status_code == 400, resp.text


def test_unknown_fields_are_ignored_as_the_proto3_json_mapping_says(http, suite, admin, made):
    sku = new_sku()
    made.append(sku)
    resp = http.post("/admin/products", json=body(sku, colour="red"), headers=admin)
    assert resp.status_code == 200 and resp.json()["sku"] == sku
    # A PATCH whose only field is unknown arrives empty: refused, so a misspelt field is not silently a no-op.
    resp = http.patch(f"/admin/products/{sku}", json={"prize": 5}, headers=admin)
    assert resp.status_code == 400 and details(resp)["metadata"] == {"field": "body"}
    assert db_product(suite, sku)[3] == 149_000


def test_a_batch_is_all_or_nothing_and_names_the_bad_row(http, suite, admin, made):
    skus = [new_sku() for _ in range(4)]
    made.extend(skus)
    rows = [body(s) for s in skus]
    for bad, field in (({"price": 0}, "price"), ({"sku": skus[0]}, "sku"), ({"name": ""}, "name")):
        resp = http.post("/admin/products:batchUpsert", json={"products": [*rows[:2], rows[2] | bad, rows[3]]},
                         headers=admin)
        assert resp.status_code == 400, resp.text
        assert details(resp)["reason"] == "INVALID_ARGUMENT"
        assert details(resp)["metadata"] == {"index": "2", "field": field}
    assert [db_product(suite, s) for s in skus] == [None] * 4
    resp = http.post("/admin/products:batchUpsert", json={"products": []}, headers=admin)
    assert resp.status_code == 400 and details(resp)["metadata"] == {"field": "products"}

    resp = http.post("/admin/products:batchUpsert", json={"products": rows[:3]}, headers=admin)
    assert resp.status_code == 200 and resp.json() == {"created": 3, "updated": 0}
    resp = http.post("/admin/products:batchUpsert", json={"products": [rows[0] | {"price": 7}, *rows[1:]]},
                     headers=admin)
    assert resp.status_code == 200 and resp.json() == {"created": 1, "updated": 3}
    assert [db_product(suite, s)[3] for s in skus] == [7, 149_000, 149_000, 149_000]
    assert [history_count(suite, s) for s in skus] == [2, 1, 1, 1]


@pytest.mark.parametrize("patch, field", [({"price": "x"}, None), ({"listed": "maybe"}, None), ({"price": 0}, "price"),
                                          ({"name": ""}, "name"), ({"category": "A"}, "category"), ({}, "body")])
def test_a_bad_patch_is_400_and_changes_nothing(http, suite, admin, patch, field):
    before = db_product(suite, "EL-0002")
    resp = http.patch("/admin/products/EL-0002", json=patch, headers=admin)
    assert resp.status_code == 400, resp.text
    if field:
        assert details(resp)["metadata"] == {"field": field}
    assert db_product(suite, "EL-0002") == before


def test_a_patch_of_an_unknown_sku_is_404(http, admin):
    resp = http.patch("/admin/products/NO-SUCH-SKU", json={"price": 5}, headers=admin)
    assert resp.status_code == 404 and reason(resp) == "PRODUCT_NOT_FOUND"
    resp = http.get("/admin/products/NO-SUCH-SKU/changes", headers=admin)
    assert resp.status_code == 404 and reason(resp) == "PRODUCT_NOT_FOUND"


@pytest.mark.parametrize("query", ["page=0", "limit=101", "page=x", "sort=asc"])
def test_bad_history_parameters_are_400(http, admin, query):
    assert http.get(f"/admin/products/EL-0001/changes?{query}", headers=admin).status_code == 400


def test_an_unlisted_product_leaves_the_storefront_while_a_cart_holding_it_checks_out_and_pays(http, suite, admin,
                                                                                              made):
    sku = new_sku()
    made.append(sku)
    word = f"qz{uuid.uuid4().hex[:8]}"
    assert http.post("/admin/products", json=body(sku, name=f"Lamp {word}", price=10_000), headers=admin).status_code == 200
    assert http.put(f"/admin/stock/{sku}", json={"onHand": 10}, headers=admin).status_code == 200
    holder, latecomer = Shopper(http, suite), Shopper(http, suite)
    assert holder.add(sku, 2).status_code == 200

    resp = http.patch(f"/admin/products/{sku}", json={"listed": False}, headers=admin)
    assert resp.status_code == 200 and resp.json()["sku"] == sku
    time.sleep(CART_KEEPS + 0.2)  # the cart's kept copy of the product runs out
    page = http.get(f"/catalogs/{sku}")
    assert page.status_code == 404 and reason(page) == "PRODUCT_NOT_FOUND"
    assert http.get("/catalogs", params={"search": word}).json()["total"] == 0
    refused = latecomer.add(sku, 1)
    assert refused.status_code == 404 and reason(refused) == "PRODUCT_NOT_FOUND"
    assert latecomer.cart()["items"] == []

    assert [(i["sku"], i["qty"]) for i in holder.cart()["items"]] == [(sku, 2)]
    order = holder.checkout()
    assert order.status_code == 200, order.text
    paid = holder.pay(order.json()["orderId"], order.json()["total"])
    assert paid.status_code == 200 and paid.json()["status"] == "PAID"
    assert order.json()["total"] == 20_000

    assert http.patch(f"/admin/products/{sku}", json={"listed": True}, headers=admin).status_code == 200
    assert http.get(f"/catalogs/{sku}").json()["sales"] == 2
    time.sleep(CART_KEEPS + 0.2)
    assert latecomer.add(sku, 1).status_code == 200
    latecomer.set(sku, 0)
    history = http.get(f"/admin/products/{sku}/changes", headers=admin).json()
    assert [(c["before"]["listed"], c["after"]["listed"]) for c in history["changes"][:2]] == [(False, True),
                                                                                               (True, False)]


def run_import(suite, path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "devstack.import_catalog", str(path), "--url", suite.base_url,
                             "--token", suite.token("merchant-import", "admin"), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_an_import_killed_midway_and_run_again_loads_each_product_once(suite, tmp_path, made):
    count, prefix = 3000, f"E2E-IMP-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "products.csv"
    import_catalog.generate(path, count, prefix=prefix)
    made.extend(f"{prefix}-{n:06d}" for n in range(1, count + 1))
    progress = path.with_name(path.name + ".progress")

    first = run_import(suite, path, "--batch", "50")
    deadline = time.monotonic() + 60
    while not (progress.exists() and json.loads(progress.read_text() or "{}").get("rows", 0) >= 500):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the import made no progress"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    with psycopg.connect(suite.dsn) as conn:
        loaded = conn.execute("SELECT count(*) FROM catalog.products WHERE sku LIKE %s", (prefix + "-%",)).fetchone()[0]
    assert 500 <= loaded < count

    second = run_import(suite, path)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"imported {count} products" in out and "sent by an earlier run" in out and "products/s" in out
    assert not progress.exists()

    # Once more from the start: every product is there as the file has it, so nothing is created or changed.
    third = run_import(suite, path, "--restart")
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0 and f"(0 created, {count} updated" in out, out + err

    with psycopg.connect(suite.dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT sku) FROM catalog.products WHERE sku LIKE %s",
                            (prefix + "-%",)).fetchone() == (count, count)
        # One creation recorded per product, and no change: each was written once, whatever was sent twice.
        assert conn.execute("SELECT count(*), count(DISTINCT sku), count(*) FILTER (WHERE before IS NOT NULL)"
                            " FROM catalog.product_changes WHERE sku LIKE %s", (prefix + "-%",)).fetchone() == (
            count, count, 0)


def test_an_import_with_a_bad_row_sends_nothing_and_names_it(suite, tmp_path):
    path = tmp_path / "bad.csv"
    sku = new_sku()
    path.write_text(f"sku,name,description,category,price\n{sku},Lamp,,e2e-admin,5000\n{sku}-2,Lamp,,e2e-admin,0\n")
    run = run_import(suite, path)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1 and "line 3: price" in err, err
    assert db_product(suite, sku) is None


def test_a_batch_of_a_thousand_products_passes_the_gateway_and_a_larger_body_is_413(http, suite, admin, made):
    prefix = f"E2E-BIG-{uuid.uuid4().hex[:6]}"
    rows = [body(f"{prefix}-{n:04d}", description="d" * 600) for n in range(1000)]
    made.extend(r["sku"] for r in rows)
    resp = http.post("/admin/products:batchUpsert", json={"products": rows}, headers=admin, timeout=60)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json() == {"created": 1000, "updated": 0}
    # Past the route's own limit (1 MiB), the gateway refuses the body before any service sees it.
    huge = [r | {"description": "d" * 1100} for r in rows]
    resp = http.post("/admin/products:batchUpsert", json={"products": huge}, headers=admin, timeout=60)
    assert resp.status_code == 413 and reason(resp) == "BODY_TOO_LARGE"
    with psycopg.connect(suite.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM catalog.products WHERE sku LIKE %s AND description = %s",
                            (prefix + "-%", "d" * 600)).fetchone() == (1000,)
    # Every other route keeps the gateway's limit of 64 KiB.
    resp = http.post("/admin/products", json=body(new_sku(), description="d" * 70_000), headers=admin)
    assert resp.status_code == 413
