"""A whole purchase through the REST gateway, with stock, units sold and order status checked at each step."""

import psycopg

from tests.e2e.shop_client import Shopper, reason

CART_LINE = {"sku", "name", "price", "qty", "subtotal", "reservedUntil", "expired", "campaignId"}
ORDER = {"orderId", "status", "items", "total", "currency", "payBefore", "createdAt"}


def stock(http, suite, sku):
    return http.get(f"/admin/stock/{sku}", headers=suite.auth("ops", "admin")).json()


def test_full_purchase(http, suite):
    shopper = Shopper(http, suite)
    sku, other = "HE-0005", "HE-0015"
    http.put(f"/admin/stock/{sku}", json={"onHand": 20}, headers=suite.auth("ops", "admin"))
    product = http.get(f"/catalogs/{sku}").json()
    assert product["available"] == 20
    sales_before = product["sales"]

    resp = shopper.add(sku, 2)
    assert resp.status_code == 200, resp.text
    cart = resp.json()
    assert [(i["sku"], i["qty"], i["expired"]) for i in cart["items"]] == [(sku, 2, False)]
    assert set(cart["items"][0]) == CART_LINE and cart["items"][0]["campaignId"] == ""
    assert cart["total"] == 2 * product["price"] and cart["currency"] == "IDR"
    assert http.get(f"/catalogs/{sku}").json()["available"] == 18

    assert shopper.set(sku, 3).json()["items"][0]["qty"] == 3
    assert http.get(f"/catalogs/{sku}").json()["available"] == 17
    before_other = http.get(f"/catalogs/{other}").json()["available"]
    assert len(shopper.set(other, 1).json()["items"]) == 2
    assert http.get(f"/catalogs/{other}").json()["available"] == before_other - 1
    assert [i["sku"] for i in shopper.set(other, 0).json()["items"]] == [sku]
    assert http.get(f"/catalogs/{other}").json()["available"] == before_other

    resp = shopper.checkout()
    assert resp.status_code == 200, resp.text
    order = resp.json()
    assert set(order) == ORDER
    assert order["status"] == "PENDING_PAYMENT"
    assert [(i["sku"], i["qty"], i["price"], i["subtotal"], i["campaignId"]) for i in order["items"]] == [
        (sku, 3, product["price"], 3 * product["price"], "")]
    assert order["total"] == 3 * product["price"]
    assert shopper.cart() == {"items": [], "total": 0, "currency": "IDR"}
    assert stock(http, suite, sku) == {"sku": sku, "onHand": 20, "reserved": 3, "available": 17, "setAside": 0}

    resp = shopper.pay(order["orderId"], order["total"])
    assert resp.status_code == 200, resp.text
    paid = resp.json()
    assert paid["status"] == "PAID" and paid["paymentId"] and paid["paidAt"]
    assert stock(http, suite, sku) == {"sku": sku, "onHand": 17, "reserved": 0, "available": 17, "setAside": 0}
    assert http.get(f"/catalogs/{sku}").json()["sales"] == sales_before + 3
    assert shopper.order(order["orderId"]).json() == paid
    listed = shopper.orders().json()
    assert listed["total"] == 1 and listed["items"] == [paid]
    with psycopg.connect(suite.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders.provider_charges WHERE payment_id = %s",
                            (paid["paymentId"],)).fetchone() == (1,)


def test_empty_cart_checkout_is_400(http, suite):
    resp = Shopper(http, suite).checkout()
    assert resp.status_code == 400 and reason(resp) == "CART_EMPTY"
