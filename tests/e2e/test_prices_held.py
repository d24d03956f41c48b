"""Prices held with the units, through the gateway: `expectedPrice` in the body of POST /chart and in the query of
PUT /chart/{sku}/{qty}, checked (400 naming it) and passed on (409 PRICE_CHANGED with the price, nothing held);
every cart and order line carries the price its units were held at and `campaignId`."""

import uuid

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
