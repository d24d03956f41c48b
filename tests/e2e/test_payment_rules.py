"""Payment rules through the gateway: amounts, declines, idempotency keys, one charge, the payment window."""

import concurrent.futures
import time
import uuid

import psycopg
import pytest

from devstack.procs import wait_until
from tests.e2e.shop_client import Shopper, reason, seconds


def sleep_past(rfc3339: str, margin: float = 0.5) -> None:
    """Sleeps until `margin` seconds past an instant of an answer (the database and this test share a clock)."""
    time.sleep(max(0.0, seconds(rfc3339) + margin - time.time()))


def charges(suite, order_id):
    with psycopg.connect(suite.dsn) as conn:
        return conn.execute("SELECT count(*) FROM orders.provider_charges c JOIN orders.payments p"
                            " ON p.payment_id = c.payment_id WHERE p.order_id = %s AND c.refunded_at IS NULL",
                            (order_id,)).fetchone()[0]


@pytest.fixture
def order(http, suite):
    """A checked-out order of a fresh shopper: (shopper, order)."""
    shopper = Shopper(http, suite)
    assert shopper.add("BE-0011", 2).status_code == 200
    resp = shopper.checkout()
    assert resp.status_code == 200, resp.text
    return shopper, resp.json()


def test_amount_must_equal_the_total(order, suite):
    shopper, o = order
    resp = shopper.pay(o["orderId"], o["total"] - 1)
    assert resp.status_code == 400 and reason(resp) == "AMOUNT_MISMATCH"
    assert shopper.order(o["orderId"]).json()["status"] == "PENDING_PAYMENT"
    assert charges(suite, o["orderId"]) == 0


def test_decline_then_success(order, suite):
    shopper, o = order
    resp = shopper.pay(o["orderId"], o["total"], token="tok_declined")
    assert resp.status_code == 400 and reason(resp) == "PAYMENT_DECLINED"
    assert shopper.order(o["orderId"]).json()["status"] == "PENDING_PAYMENT"
    resp = shopper.pay(o["orderId"], o["total"], token="tok_visa")
    assert resp.status_code == 200 and resp.json()["status"] == "PAID"
    assert charges(suite, o["orderId"]) == 1


def test_ten_concurrent_payments_with_one_key_charge_once(order, suite):
    shopper, o = order
    key = uuid.uuid4().hex
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: shopper.pay(o["orderId"], o["total"], key=key), range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert len({a.json()["paymentId"] for a in answers}) == 1
    assert charges(suite, o["orderId"]) == 1


def test_replays_answer_the_first_answer_and_other_keys_are_refused(order, suite):
    shopper, o = order
    key = uuid.uuid4().hex
    first = shopper.pay(o["orderId"], o["total"], key=key)
    assert first.status_code == 200
    assert shopper.pay(o["orderId"], o["total"], key=key).json() == first.json()
    other = shopper.pay(o["orderId"], o["total"])
    assert other.status_code == 409 and reason(other) == "ALREADY_PAID"
    reused = shopper.pay(o["orderId"], o["total"] + 5, key=key)
    assert reused.status_code == 409 and reason(reused) == "IDEMPOTENCY_KEY_REUSED"
    assert charges(suite, o["orderId"]) == 1


def test_a_lost_provider_answer_retried_with_the_key_charges_once(order, suite):
    shopper, o = order
    key = uuid.uuid4().hex
    lost = shopper.pay(o["orderId"], o["total"], key=key, token="tok_timeout")
    assert lost.status_code == 503 and reason(lost) == "PAYMENT_PROVIDER_UNAVAILABLE"
    assert shopper.order(o["orderId"]).json()["status"] == "PENDING_PAYMENT"
    assert charges(suite, o["orderId"]) == 1, "the provider did charge; only its answer was lost"
    time.sleep(1.2)  # a retry some time later must replay the same inventory calls, not be refused
    retried = shopper.pay(o["orderId"], o["total"], key=key, token="tok_timeout")
    assert retried.status_code == 200 and retried.json()["status"] == "PAID"
    assert charges(suite, o["orderId"]) == 1


def test_a_cut_off_charge_under_one_key_is_refunded_when_another_key_pays(order, suite):
    shopper, o = order
    first_key = uuid.uuid4().hex
    assert reason(shopper.pay(o["orderId"], o["total"], key=first_key, token="tok_timeout")) == \
        "PAYMENT_PROVIDER_UNAVAILABLE"
    second = shopper.pay(o["orderId"], o["total"])  # the customer clicks pay again: a new key
    assert second.status_code == 200 and second.json()["status"] == "PAID"
    assert charges(suite, o["orderId"]) == 1, "the cut-off charge was refunded before the new one"
    late = shopper.pay(o["orderId"], o["total"], key=first_key, token="tok_timeout")
    assert late.status_code == 409 and reason(late) == "ALREADY_PAID"
    assert charges(suite, o["orderId"]) == 1


def test_the_sweeper_finishes_a_payment_cut_off_after_selling_and_refunds_one_cut_off_before(http, suite, kv):

    from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

    sku = "BE-0016"
    admin = suite.auth("ops", "admin")
    http.put(f"/admin/stock/{sku}", json={"onHand": 10}, headers=admin)
    # Long enough for both payments and the commit below to come within it on a loaded machine (default 900 s).
    window = 6
    kv("shop/config/payment_window_seconds", str(window))
    sold, unsold = Shopper(http, suite), Shopper(http, suite)
    orders = {}
    deadline = time.monotonic() + 5
    for shopper in (sold, unsold):
        while True:
            shopper.add(sku, 1)
            o = shopper.checkout().json()
            if seconds(o["payBefore"]) - seconds(o["createdAt"]) < window + 0.5 or time.monotonic() > deadline:
                break
        orders[shopper.user] = o
        assert reason(shopper.pay(o["orderId"], o["total"], token="tok_timeout")) == "PAYMENT_PROVIDER_UNAVAILABLE"
    # `sold`'s payment got as far as selling the units, then its process died.
    with psycopg.connect(suite.dsn) as conn:
        holds = [r[0] for r in conn.execute("SELECT hold_id::text FROM orders.items WHERE order_id = %s",
                                            (orders[sold.user]["orderId"],))]
    with suite.sync_channel("inventory") as channel:
        inventory_pb2_grpc.InventoryServiceStub(channel).CommitHolds(
            inventory_pb2.CommitHoldsRequest(hold_ids=holds, idempotency_key=f"pay:{orders[sold.user]['orderId']}"))
    # Past both windows, and a sweep (every second) after them: the sold order paid, the unsold one's charge refunded.
    sleep_past(max((o["payBefore"] for o in orders.values()), key=seconds))
    wait_until(lambda: sold.order(orders[sold.user]["orderId"]).json()["status"] == "PAID"
               and charges(suite, orders[unsold.user]["orderId"]) == 0, 30, what="a sweep past both windows")
    assert sold.order(orders[sold.user]["orderId"]).json()["status"] == "PAID"
    assert charges(suite, orders[sold.user]["orderId"]) == 1
    assert unsold.order(orders[unsold.user]["orderId"]).json()["status"] == "EXPIRED"
    assert charges(suite, orders[unsold.user]["orderId"]) == 0, "a charge for units never sold is refunded"


def test_a_declined_answer_is_replayed_too(order):
    shopper, o = order
    key = uuid.uuid4().hex
    assert reason(shopper.pay(o["orderId"], o["total"], key=key, token="tok_declined")) == "PAYMENT_DECLINED"
    again = shopper.pay(o["orderId"], o["total"], key=key, token="tok_declined")
    assert again.status_code == 400 and reason(again) == "PAYMENT_DECLINED"


def test_the_idempotency_key_is_required(order, http):
    shopper, o = order
    resp = http.post("/payment", json={"orderId": o["orderId"], "amount": o["total"], "method": "card",
                                       "token": "tok_visa"}, headers=shopper.headers)
    assert resp.status_code == 400 and reason(resp) == "IDEMPOTENCY_KEY_REQUIRED"
    resp = shopper.pay(o["orderId"], o["total"], key="k" * 256)
    assert resp.status_code == 400


def test_the_same_checkout_key_gives_the_same_order(http, suite):
    shopper = Shopper(http, suite)
    shopper.add("BE-0012", 1)
    key = uuid.uuid4().hex
    first = shopper.checkout(key)
    assert first.status_code == 200
    shopper.add("BE-0013", 1)  # a new cart line after the first checkout
    again = shopper.checkout(key)
    assert again.status_code == 200 and again.json() == first.json()
    assert [i["sku"] for i in shopper.cart()["items"]] == ["BE-0013"], "a replayed checkout does nothing else"
    assert shopper.orders().json()["total"] == 1


def test_payment_after_the_window_is_refused_and_the_units_are_back(http, suite, kv):
    sku = "BE-0014"
    admin = suite.auth("ops", "admin")
    http.put(f"/admin/stock/{sku}", json={"onHand": 40}, headers=admin)
    kv("shop/config/payment_window_seconds", "2")
    shopper = Shopper(http, suite)
    orders = []

    def checkout():
        assert shopper.add(sku, 4).status_code == 200
        resp = shopper.checkout()
        assert resp.status_code == 200, resp.text
        orders.append(resp.json())
        return orders[-1]

    # The setting reaches the order service within 5 seconds of the KV write.
    deadline = time.monotonic() + 5
    o = checkout()
    while seconds(o["payBefore"]) - seconds(o["createdAt"]) > 2.5 and time.monotonic() < deadline:
        time.sleep(0.2)
        o = checkout()
    # The window is the setting plus the hand-over of the cart (milliseconds): 2 s, not the default 900 s.
    assert seconds(o["payBefore"]) - seconds(o["createdAt"]) == pytest.approx(2, abs=0.5)
    sleep_past(o["payBefore"])
    assert shopper.order(o["orderId"]).json()["status"] == "EXPIRED"
    resp = shopper.pay(o["orderId"], o["total"])
    assert resp.status_code == 409 and reason(resp) == "ORDER_EXPIRED"
    assert charges(suite, o["orderId"]) == 0
    # Only the probes made before the setting applied (15-minute windows) still hold units.
    still_held = sum(4 for x in orders if shopper.order(x["orderId"]).json()["status"] == "PENDING_PAYMENT")
    stock = http.get(f"/admin/stock/{sku}", headers=admin).json()
    assert (stock["onHand"], stock["reserved"]) == (40, still_held)

