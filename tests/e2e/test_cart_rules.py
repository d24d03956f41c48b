"""Cart rules through the gateway: all or nothing, limits, shrinking gives back, expiry from Consul KV."""

import time

from tests.e2e.shop_client import Shopper, reason, seconds


def available(http, sku):
    return http.get(f"/catalogs/{sku}").json()["available"]


def sleep_past(rfc3339: str, margin: float = 0.5) -> None:
    """Sleeps until `margin` seconds past an instant of an answer (the database and this test share a clock)."""
    time.sleep(max(0.0, seconds(rfc3339) + margin - time.time()))


def test_out_of_stock_leaves_the_cart_unchanged_and_says_what_is_left(http, suite):
    sku = "TO-0020"
    http.put(f"/admin/stock/{sku}", json={"onHand": 5}, headers=suite.auth("ops", "admin"))
    shopper = Shopper(http, suite)
    assert shopper.add(sku, 3).status_code == 200
    resp = shopper.add(sku, 3)
    assert resp.status_code == 409 and reason(resp) == "OUT_OF_STOCK"
    assert resp.json()["details"][0]["metadata"]["available"] == "2"
    assert [(i["sku"], i["qty"]) for i in shopper.cart()["items"]] == [(sku, 3)]
    assert available(http, sku) == 2
    resp = shopper.set(sku, 6)
    assert resp.status_code == 409 and [i["qty"] for i in shopper.cart()["items"]] == [3]


def test_limits_and_unknown_products(http, suite):
    shopper = Shopper(http, suite)
    sku = "TO-0021"
    http.put(f"/admin/stock/{sku}", json={"onHand": 500}, headers=suite.auth("ops", "admin"))
    assert shopper.add(sku, 60).status_code == 200
    resp = shopper.add(sku, 41)
    assert resp.status_code == 400 and reason(resp) == "QTY_LIMIT"
    for qty in (0, 101, -1):
        assert shopper.add(sku, qty).status_code == 400
    assert shopper.set(sku, 101).status_code == 400
    resp = shopper.add("NO-SUCH-SKU", 1)
    assert resp.status_code == 404 and reason(resp) == "PRODUCT_NOT_FOUND"
    assert [i["qty"] for i in shopper.cart()["items"]] == [60]


def test_shrinking_and_removing_give_units_back_at_once(http, suite):
    sku = "TO-0022"
    http.put(f"/admin/stock/{sku}", json={"onHand": 10}, headers=suite.auth("ops", "admin"))
    shopper = Shopper(http, suite)
    shopper.add(sku, 8)
    assert available(http, sku) == 2
    shopper.set(sku, 5)
    assert available(http, sku) == 5
    assert shopper.set(sku, 0).json() == {"items": [], "total": 0, "currency": "IDR"}
    assert available(http, sku) == 10


def test_a_hold_past_the_ttl_from_consul_kv_shows_expired_and_its_units_return(http, suite, kv):
    sku = "TO-0023"
    http.put(f"/admin/stock/{sku}", json={"onHand": 4}, headers=suite.auth("ops", "admin"))
    # Long enough for the reads below to come before it runs out on a loaded machine (the default is 600 s).
    ttl = 5
    kv("shop/config/reservation_ttl_seconds", str(ttl))
    shopper = Shopper(http, suite)
    deadline = time.monotonic() + 5
    while True:  # the setting reaches the cart service within 5 seconds of the KV write
        cart = shopper.set(sku, 4).json()
        line = cart["items"][0]
        if seconds(line["reservedUntil"]) - time.time() < ttl + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seconds(line["reservedUntil"]) - time.time() < ttl + 1
    held = available(http, sku)
    assert time.time() < seconds(line["reservedUntil"]), "the machine took longer than the TTL: set a longer one"
    assert held == 0
    sleep_past(line["reservedUntil"])
    (line,) = shopper.cart()["items"]
    assert (line["sku"], line["qty"], line["expired"]) == (sku, 4, True)
    assert available(http, sku) == 4
    other = Shopper(http, suite)
    assert other.add(sku, 4).status_code == 200, "the expired units are anyone's"
    # Checkout re-holds expired lines only if stock allows: here it does not.
    resp = shopper.checkout()
    assert resp.status_code == 409 and reason(resp) == "OUT_OF_STOCK"
    assert [i["expired"] for i in shopper.cart()["items"]] == [True], "a refused checkout changes nothing"



def test_checkout_holds_an_expired_line_again_when_its_units_are_free(http, suite, kv):
    sku = "TO-0024"
    admin = suite.auth("ops", "admin")
    http.put(f"/admin/stock/{sku}", json={"onHand": 6}, headers=admin)
    kv("shop/config/reservation_ttl_seconds", "1")
    shopper = Shopper(http, suite)
    deadline = time.monotonic() + 5
    while True:  # wait for the short TTL to reach the cart service
        line = shopper.set(sku, 2).json()["items"][0]
        if seconds(line["reservedUntil"]) - time.time() < 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    sleep_past(line["reservedUntil"])
    assert shopper.cart()["items"][0]["expired"] is True
    assert available(http, sku) == 6
    resp = shopper.checkout()
    assert resp.status_code == 200, resp.text
    assert [(i["sku"], i["qty"]) for i in resp.json()["items"]] == [(sku, 2)]
    assert http.get(f"/admin/stock/{sku}", headers=admin).json() == {
        "sku": sku, "onHand": 6, "reserved": 2, "available": 4, "setAside": 0}
