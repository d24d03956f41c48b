"""Bad input gets a clear 4xx with a reason, never a 5xx, and changes nothing."""

import pytest

from tests.e2e.shop_client import Shopper


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", b'"text"', b'{"sku": "EL-0001", "qty": "two"}', b'{"sku": 5, "qty": 1}',
    b'{"sku": "EL-0001", "qty": 1.5}', b'{"sku": "EL-0001"}', b"{}",
    b'{"sku": "EL-0001", "qty": 99999999999}',
])
def test_malformed_bodies_are_400_and_change_nothing(http, suite, body):
    shopper = Shopper(http, suite)
    resp = http.post("/chart", content=body, headers=shopper.headers | {"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["details"][0]["reason"]
    assert shopper.cart()["items"] == []


def test_unknown_body_fields_are_ignored_as_the_proto3_json_mapping_says(http, suite):
    shopper = Shopper(http, suite)
    resp = http.post("/chart", json={"sku": "EL-0003", "qty": 1, "colour": "red"}, headers=shopper.headers)
    assert resp.status_code == 200
    assert [(i["sku"], i["qty"]) for i in resp.json()["items"]] == [("EL-0003", 1)]


def test_an_oversized_body_is_413(http, suite):
    shopper = Shopper(http, suite)
    body = b'{"sku": "' + b"x" * (70 * 1024) + b'", "qty": 1}'
    resp = http.post("/chart", content=body, headers=shopper.headers | {"content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["details"][0]["reason"] == "BODY_TOO_LARGE"


def test_path_values_that_are_not_numbers_are_400(http, suite):
    shopper = Shopper(http, suite)
    for path in ("/chart/EL-0001/two", "/chart/EL-0001/-1", "/chart/EL-0001/1.5"):
        assert http.put(path, headers=shopper.headers).status_code == 400, path


def test_a_body_field_that_repeats_a_path_field_is_refused(http, suite):
    shopper = Shopper(http, suite)
    resp = http.put("/chart/EL-0001/1", json={"sku": "EL-0002"}, headers=shopper.headers)
    assert resp.status_code == 400
    assert shopper.cart()["items"] == []


@pytest.mark.parametrize("query", ["page=0", "limit=101", "page=x", "sort=asc"])
def test_bad_order_listing_parameters_are_400(http, suite, query):
    assert http.get(f"/orders?{query}", headers=Shopper(http, suite).headers).status_code == 400
