"""POST /admin/stock/{sku}/adjustments through the gateway: deltas under the SKU's lock, so clerks adjusting at
once all count; a required key, so a resend counts once; each refusal changes nothing."""

from __future__ import annotations

import concurrent.futures
import uuid

import psycopg

from tests.e2e.shop_client import Shopper, reason


def adjust(http, suite, sku: str, delta: int, why: str = "RESTOCK", key: str | None = None, user: str = "clerk"):
    headers = suite.auth(user, "admin") | ({"Idempotency-Key": key} if key is not None else {})
    return http.post(f"/admin/stock/{sku}/adjustments", json={"delta": delta, "reason": why}, headers=headers)


def stock(http, suite, sku: str) -> dict:
    resp = http.get(f"/admin/stock/{sku}", headers=suite.auth("ops", "admin"))
    assert resp.status_code == 200, resp.text
    return resp.json()


def ledger(suite, sku: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(suite.dsn) as conn:
        return conn.execute("SELECT reason, on_hand_delta, actor FROM inventory.ledger WHERE sku = %s ORDER BY id",
                            (sku,)).fetchall()


def test_a_sku_without_stock_starts_at_zero_and_each_adjustment_is_ledgered_with_its_reason(http, suite):
    sku = f"ADJ-{uuid.uuid4().hex[:8]}"
    resp = adjust(http, suite, sku, 40, "RESTOCK", key=uuid.uuid4().hex, user="ana")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"sku": sku, "onHand": 40, "reserved": 0, "available": 40, "setAside": 0}
    assert adjust(http, suite, sku, -3, "DAMAGED", key=uuid.uuid4().hex, user="ben").json()["onHand"] == 37
    assert adjust(http, suite, sku, 1, "RETURNED", key=uuid.uuid4().hex, user="ana").json()["onHand"] == 38
    assert adjust(http, suite, sku, -8, "CORRECTION", key=uuid.uuid4().hex, user="ben").json()["onHand"] == 30
    assert ledger(suite, sku) == [("RESTOCK", 40, "ana"), ("DAMAGED", -3, "ben"), ("RETURNED", 1, "ana"),
                                  ("CORRECTION", -8, "ben")]
    assert stock(http, suite, sku)["onHand"] == 30


def test_clerks_adjusting_at_once_all_count_and_a_resend_counts_once(http, suite):
    sku = f"ADJ-{uuid.uuid4().hex[:8]}"
    keys = [uuid.uuid4().hex for _ in range(40)]
    # Every key sent twice, all at once: forty deliveries of 5 units, each resent once by a clerk who lost the
    # answer.
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda k: adjust(http, suite, sku, 5, key=k), keys + keys))
    assert {a.status_code for a in answers} == {200}, {a.text for a in answers if a.status_code != 200}
    assert stock(http, suite, sku)["onHand"] == 200
    assert sum(delta for _, delta, _ in ledger(suite, sku)) == 200
    assert len(ledger(suite, sku)) == 40
    # A resend later answers the first answer again.
    again = adjust(http, suite, sku, 5, key=keys[0])
    assert again.status_code == 200 and stock(http, suite, sku)["onHand"] == 200


def test_refusals_change_nothing(http, suite, audit_clean):
    sku = "HE-0021"
    http.put(f"/admin/stock/{sku}", json={"onHand": 10}, headers=suite.auth("ops", "admin"))
    shopper = Shopper(http, suite)
    assert shopper.add(sku, 4).status_code == 200
    before = stock(http, suite, sku)
    entries = len(ledger(suite, sku))

    below = adjust(http, suite, sku, -7, "DAMAGED", key=uuid.uuid4().hex)
    assert below.status_code == 409 and reason(below) == "BELOW_RESERVED", below.text
    assert below.json()["details"][0]["metadata"]["reserved"] == "4"
    # Exactly down to what is held is allowed; one more is not.
    assert adjust(http, suite, sku, -6, "DAMAGED", key=uuid.uuid4().hex).json()["available"] == 0
    assert reason(adjust(http, suite, sku, -1, "DAMAGED", key=uuid.uuid4().hex)) == "BELOW_RESERVED"
    assert adjust(http, suite, sku, 6, "CORRECTION", key=uuid.uuid4().hex).status_code == 200
    entries += 2

    missing = adjust(http, suite, sku, 5)
    assert missing.status_code == 400 and reason(missing) == "IDEMPOTENCY_KEY_REQUIRED"
    for body, field in [({"delta": 0, "reason": "RESTOCK"}, "delta"),
                        ({"delta": 1_000_001, "reason": "RESTOCK"}, "delta"),
                        ({"delta": -1_000_001, "reason": "RESTOCK"}, "delta"),
                        ({"delta": 5}, "reason")]:
        resp = http.post(f"/admin/stock/{sku}/adjustments", json=body,
                         headers=suite.auth("ops", "admin") | {"Idempotency-Key": uuid.uuid4().hex})
        assert resp.status_code == 400 and reason(resp) == "INVALID_ARGUMENT", (body, resp.text)
        assert resp.json()["details"][0]["metadata"]["field"] == field
    for body in [{"delta": "five", "reason": "RESTOCK"}, {"delta": 5, "reason": "STOLEN"}, {"delta": 1.5},
                 [1, 2], {"delta": 5, "reason": 3.5}]:
        resp = http.post(f"/admin/stock/{sku}/adjustments", json=body,
                         headers=suite.auth("ops", "admin") | {"Idempotency-Key": uuid.uuid4().hex})
        assert resp.status_code == 400, (body, resp.status_code, resp.text)
    key = uuid.uuid4().hex
    assert adjust(http, suite, sku, 2, key=key).status_code == 200
    reused = adjust(http, suite, sku, 3, key=key)
    assert reused.status_code == 409 and reason(reused) == "IDEMPOTENCY_KEY_REUSED"
    entries += 1

    shopper_try = http.post(f"/admin/stock/{sku}/adjustments", json={"delta": 5, "reason": "RESTOCK"},
                            headers=suite.auth("mallory") | {"Idempotency-Key": uuid.uuid4().hex})
    assert shopper_try.status_code == 403
    anonymous = http.post(f"/admin/stock/{sku}/adjustments", json={"delta": 5, "reason": "RESTOCK"},
                          headers={"Idempotency-Key": uuid.uuid4().hex})
    assert anonymous.status_code == 401
    assert stock(http, suite, sku) == before | {"onHand": before["onHand"] + 2, "available": before["available"] + 2}
    assert len(ledger(suite, sku)) == entries
    assert audit_clean() == []
