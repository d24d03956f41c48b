"""POST /chart with an Idempotency-Key through the gateway: a replay answers the first answer and adds nothing."""

import uuid

from tests.e2e.shop_client import Shopper, reason

SKU = "TO-0031"


def test_a_replayed_add_answers_the_first_answer_and_holds_once(http, suite, audit_clean):
    admin = suite.auth("ops", "admin")
    assert http.put(f"/admin/stock/{SKU}", json={"onHand": 10}, headers=admin).status_code == 200
    shopper = Shopper(http, suite)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = http.post("/chart", json={"sku": SKU, "qty": 2}, headers=shopper.headers | key)
    assert first.status_code == 200, first.text
    again = http.post("/chart", json={"sku": SKU, "qty": 2}, headers=shopper.headers | key)
    assert again.status_code == 200 and again.json() == first.json()
    assert http.get(f"/admin/stock/{SKU}", headers=admin).json()["reserved"] == 2
    other = http.post("/chart", json={"sku": SKU, "qty": 3}, headers=shopper.headers | key)
    assert other.status_code == 409 and reason(other) == "IDEMPOTENCY_KEY_REUSED"
    new = http.post("/chart", json={"sku": SKU, "qty": 1}, headers=shopper.headers | {"Idempotency-Key": "k2"})
    assert new.status_code == 200 and new.json()["items"][0]["qty"] == 3
    assert http.get(f"/admin/stock/{SKU}", headers=admin).json()["reserved"] == 3
    assert shopper.set(SKU, 0).status_code == 200
    assert audit_clean() == []


def test_a_key_is_one_users_own(http, suite):
    key = {"Idempotency-Key": uuid.uuid4().hex}
    a, b = Shopper(http, suite), Shopper(http, suite)
    assert http.post("/chart", json={"sku": SKU, "qty": 1}, headers=a.headers | key).status_code == 200
    answer = http.post("/chart", json={"sku": SKU, "qty": 1}, headers=b.headers | key)
    assert answer.status_code == 200 and [i["qty"] for i in answer.json()["items"]] == [1]
    assert a.set(SKU, 0).status_code == 200 and b.set(SKU, 0).status_code == 200


def test_an_overlong_key_is_refused(http, suite):
    shopper = Shopper(http, suite)
    answer = http.post("/chart", json={"sku": SKU, "qty": 1}, headers=shopper.headers | {"Idempotency-Key": "k" * 256})
    assert answer.status_code == 400
    assert shopper.cart()["items"] == []
