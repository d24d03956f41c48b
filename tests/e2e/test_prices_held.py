"""Prices held with the units, through the gateway: `expectedPrice` in the body of POST /chart and in the query of
PUT /chart/{sku}/{qty}, checked (400 naming it) and passed on (409 PRICE_CHANGED with the price, nothing held);
every cart and order line carries the price its units were held at and `campaignId`, from a flash sale's add to its
paid order, whatever the sale does meanwhile."""

import uuid
from datetime import datetime, timedelta, timezone

import psycopg

from tests.e2e.shop_client import Shopper, reason


def _stock(http, suite, sku: str, on_hand: int) -> int:
    """Sets the SKU's stock; its catalog price."""
    http.put(f"/admin/stock/{sku}", json={"onHand": on_hand}, headers=suite.auth("ops", "admin"))
    return http.get(f"/catalogs/{sku}").json()["price"]


def test_expected_price_out_of_range_or_malformed_is_a_400_and_holds_nothing(http, suite):
    sku = "FA-0201"
    _stock(http, suite, sku, 10)
    shopper = Shopper(http, suite)
    for bad in (-1, 2_000_000_001):
        resp = http.post("/chart", json={"sku": sku, "qty": 1, "expectedPrice": bad}, headers=shopper.headers)
        assert resp.status_code == 400 and reason(resp) == "INVALID_ARGUMENT", resp.text
        assert resp.json()["details"][0]["metadata"]["field"] == "expectedPrice"
        resp = http.put(f"/chart/{sku}/1", params={"expectedPrice": bad}, headers=shopper.headers)
        assert resp.status_code == 400 and resp.json()["details"][0]["metadata"]["field"] == "expectedPrice"
    for malformed in ("abc", "1.5"):
        resp = http.put(f"/chart/{sku}/1", params={"expectedPrice": malformed}, headers=shopper.headers)
        assert resp.status_code == 400, resp.text
    resp = http.post("/chart", json={"sku": sku, "qty": 1, "expectedPrice": "cheap"}, headers=shopper.headers)
    assert resp.status_code == 400, resp.text
    assert shopper.cart()["items"] == []


def test_the_expected_price_holds_the_line_at_it_and_is_part_of_the_key(http, suite):
    sku = "FA-0202"
    price = _stock(http, suite, sku, 10)
    shopper = Shopper(http, suite)
    key = uuid.uuid4().hex
    headers = shopper.headers | {"Idempotency-Key": key}

    resp = http.post("/chart", json={"sku": sku, "qty": 2, "expectedPrice": price}, headers=headers)
    assert resp.status_code == 200, resp.text
    (line,) = resp.json()["items"]
    assert (line["price"], line["subtotal"], line["campaignId"]) == (price, 2 * price, "")
    resp = http.post("/chart", json={"sku": sku, "qty": 2}, headers=headers)
    assert resp.status_code == 409 and reason(resp) == "IDEMPOTENCY_KEY_REUSED"

    resp = http.put(f"/chart/{sku}/3", params={"expectedPrice": price}, headers=shopper.headers)
    assert resp.status_code == 200, resp.text
    assert [(i["qty"], i["price"]) for i in resp.json()["items"]] == [(3, price)]

    resp = shopper.checkout()
    assert resp.status_code == 200, resp.text
    assert [(i["sku"], i["price"], i["qty"], i["campaignId"]) for i in resp.json()["items"]] == [(sku, price, 3, "")]


def test_a_price_the_units_cannot_be_held_at_is_409_price_changed_and_changes_nothing(http, suite):
    sku = "FA-0203"
    price = _stock(http, suite, sku, 10)
    shopper = Shopper(http, suite)

    resp = http.post("/chart", json={"sku": sku, "qty": 1, "expectedPrice": price - 1}, headers=shopper.headers)
    assert resp.status_code == 409 and reason(resp) == "PRICE_CHANGED", resp.text
    assert resp.json()["details"][0]["metadata"]["price"] == str(price)
    assert shopper.cart()["items"] == []

    assert shopper.add(sku, 2).status_code == 200
    resp = http.put(f"/chart/{sku}/4", params={"expectedPrice": price + 1}, headers=shopper.headers)
    assert resp.status_code == 409 and reason(resp) == "PRICE_CHANGED", resp.text
    assert [(i["qty"], i["price"]) for i in shopper.cart()["items"]] == [(2, price)]
    assert http.get(f"/catalogs/{sku}").json()["available"] == 8


def _db_now(suite) -> datetime:
    with psycopg.connect(suite.dsn) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def test_a_flash_sale_buy_keeps_the_sale_price_and_campaign_from_cart_to_paid_order(http, suite):
    sku = "FA-0204"
    price = _stock(http, suite, sku, 20)
    admin = suite.auth("ops", "admin")
    now = _db_now(suite)
    resp = http.post("/admin/campaigns", headers=admin, json={
        "name": "e2e prices held", "startsAt": _iso(now - timedelta(seconds=60)),
        "endsAt": _iso(now + timedelta(seconds=600)),
        "items": [{"sku": sku, "salePrice": price // 2, "quota": 3, "maxPerUser": 2}]})
    assert resp.status_code == 200 and resp.json()["status"] == "LIVE", resp.text
    campaign, sale = resp.json()["campaignId"], price // 2
    try:
        buyer, late = Shopper(http, suite), Shopper(http, suite)

        resp = buyer.add(sku, 2)
        assert resp.status_code == 200, resp.text
        assert [(i["price"], i["subtotal"], i["campaignId"]) for i in resp.json()["items"]] == [
            (sale, 2 * sale, campaign)]
        assert resp.json()["total"] == 2 * sale
        resp = late.add(sku, 2)  # one unit of the quota is left
        assert resp.status_code == 409 and reason(resp) == "SALE_SOLD_OUT", resp.text
        assert resp.json()["details"][0]["metadata"]["remaining"] == "1"
        assert late.cart()["items"] == []
        resp = http.post("/chart", json={"sku": sku, "qty": 2, "expectedPrice": price}, headers=late.headers)
        assert resp.status_code == 200, resp.text  # the regular price, asked for: regular stock
        assert [(i["price"], i["campaignId"]) for i in resp.json()["items"]] == [(price, "")]
        resp = buyer.add(sku, 1)  # maxPerUser 2
        assert resp.status_code == 409 and reason(resp) == "PURCHASE_LIMIT", resp.text

        resp = buyer.checkout()
        assert resp.status_code == 200, resp.text
        order = resp.json()
        assert [(i["sku"], i["price"], i["qty"], i["campaignId"]) for i in order["items"]] == [
            (sku, sale, 2, campaign)]
        assert order["total"] == 2 * sale

        # The sale ends: the order awaiting payment keeps its price.
        assert http.post(f"/admin/campaigns/{campaign}:cancel", json={}, headers=admin).status_code == 200
        assert buyer.order(order["orderId"]).json()["total"] == 2 * sale
        resp = buyer.pay(order["orderId"], 2 * sale)
        assert resp.status_code == 200, resp.text
        paid = buyer.order(order["orderId"]).json()
        assert paid["status"] == "PAID" and [(i["price"], i["campaignId"]) for i in paid["items"]] == [
            (sale, campaign)]
        assert [(i["price"], i["campaignId"]) for i in late.cart()["items"]] == [(price, "")]
    finally:
        http.post(f"/admin/campaigns/{campaign}:cancel", json={}, headers=admin)
