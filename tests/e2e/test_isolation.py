"""No customer sees or touches another's cart or order; identity comes from the token alone."""

import uuid

from tests.e2e.shop_client import Shopper, reason


def test_another_users_order_is_404_to_read_and_to_pay(http, suite):
    alice, mallory = Shopper(http, suite), Shopper(http, suite)
    alice.add("AU-0003", 1)
    order = alice.checkout().json()
    for resp in (mallory.order(order["orderId"]), mallory.pay(order["orderId"], order["total"])):
        assert resp.status_code == 404 and reason(resp) == "ORDER_NOT_FOUND"
    unknown = mallory.order(str(uuid.uuid4()))
    assert unknown.status_code == 404 and unknown.json()["message"].startswith("no order")
    assert mallory.order("not-a-uuid").status_code == 404
    assert mallory.orders().json() == {"items": [], "page": 1, "limit": 10, "total": 0}
    assert alice.order(order["orderId"]).json()["status"] == "PENDING_PAYMENT"


def test_a_client_sent_user_header_changes_nothing(http, suite):
    alice, bob = Shopper(http, suite), Shopper(http, suite)
    alice.add("AU-0004", 2)
    spoofed = bob.headers | {"x-shop-user-id": alice.user}
    resp = http.get("/chart", headers=spoofed)
    assert resp.json()["items"] == [], "bob sees his own (empty) cart, not alice's"
    http.put("/chart/AU-0004/0", headers=spoofed)
    assert [i["sku"] for i in alice.cart()["items"]] == ["AU-0004"], "alice's line is untouched"


def test_carts_are_per_user(http, suite):
    a, b = Shopper(http, suite), Shopper(http, suite)
    a.add("AU-0005", 1)
    b.add("AU-0006", 3)
    assert [(i["sku"], i["qty"]) for i in a.cart()["items"]] == [("AU-0005", 1)]
    assert [(i["sku"], i["qty"]) for i in b.cart()["items"]] == [("AU-0006", 3)]
