"""The per-user purchase limit through the gateway: `max_units_per_user` from Consul KV counts a user's units of
one SKU in their cart line, their orders awaiting payment and their paid orders; a change past it is 409
PURCHASE_LIMIT with the limit and what the user has, and changes nothing."""

import time
import uuid

from tests.e2e.shop_client import Shopper, reason

SKU = "SP-0160"
LIMIT = 3


def limit_applies(http, suite, sku: str) -> None:
    """Waits until every cart worker refuses a probe past the limit (each follows Consul KV on its own)."""
    probe = Shopper(http, suite)
    refused, deadline = 0, time.monotonic() + 10
    while refused < 6:
        assert time.monotonic() < deadline, "max_units_per_user did not reach the cart within 10 s"
        resp = probe.add(sku, LIMIT + 1)
        if resp.status_code == 409 and reason(resp) == "PURCHASE_LIMIT":
            refused += 1
        else:
            assert resp.status_code == 200, resp.text
            probe.set(sku, 0)
            refused = 0
            time.sleep(0.2)


def refusal(resp) -> dict:
    assert resp.status_code == 409 and reason(resp) == "PURCHASE_LIMIT", resp.text
    return resp.json()["details"][0]["metadata"]


def test_the_limit_counts_cart_orders_awaiting_payment_and_paid_orders(http, suite, kv):
    admin = suite.auth("ops", "admin")
    assert http.put(f"/admin/stock/{SKU}", json={"onHand": 50}, headers=admin).status_code == 200
    kv("shop/config/max_units_per_user", str(LIMIT))
    limit_applies(http, suite, SKU)
    shopper = Shopper(http, suite)

    assert shopper.add(SKU, 2).status_code == 200
    meta = refusal(shopper.add(SKU, 2))
    assert (meta["limit"], meta["has"], meta["sku"]) == (str(LIMIT), "2", SKU)
    assert [(i["sku"], i["qty"]) for i in shopper.cart()["items"]] == [(SKU, 2)], "a refusal changes nothing"

    order = shopper.checkout(uuid.uuid4().hex).json()  # 2 units awaiting payment
    assert refusal(shopper.add(SKU, 2))["has"] == "2"
    assert shopper.add(SKU, 1).status_code == 200  # 2 awaiting payment + 1 in the cart = 3

    assert shopper.pay(order["orderId"], order["total"]).json()["status"] == "PAID"  # 2 paid
    assert refusal(shopper.set(SKU, 2))["has"] == "3"  # 2 paid + 1 in the cart; growing the line passes 3
    assert shopper.set(SKU, 1).status_code == 200
    assert [(i["sku"], i["qty"]) for i in shopper.cart()["items"]] == [(SKU, 1)]

    other = Shopper(http, suite)
    assert other.add(SKU, LIMIT).status_code == 200, "one user's purchases do not count against another's"
    assert http.get(f"/admin/stock/{SKU}", headers=admin).json()["reserved"] == 1 + LIMIT


def test_units_given_back_stop_counting(http, suite, kv):
    sku = "SP-0161"
    assert http.put(f"/admin/stock/{sku}", json={"onHand": 50}, headers=suite.auth("ops", "admin")).status_code == 200
    kv("shop/config/max_units_per_user", str(LIMIT))
    limit_applies(http, suite, sku)
    shopper = Shopper(http, suite)
    assert shopper.add(sku, LIMIT).status_code == 200
    assert shopper.set(sku, 0).status_code == 200  # given back: counts no more
    assert shopper.add(sku, LIMIT).status_code == 200
