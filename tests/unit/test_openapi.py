"""The committed OpenAPI document is the one the protos generate."""

from pathlib import Path

from gateway.openapi import build, render

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_document_matches_the_protos():
    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert committed == render(ROOT / "gen" / "shop.pb"), "docs/openapi.json drifted from protos/: run `make openapi`"


def test_every_route_of_the_contract_is_documented_with_its_security():
    doc = build(ROOT / "gen" / "shop.pb")
    ops = {(verb, path): op for path, item in doc["paths"].items() for verb, op in item.items()}
    assert set(ops) == {
        ("get", "/catalogs"), ("get", "/catalogs/{sku}"), ("post", "/chart"), ("put", "/chart/{sku}/{qty}"),
        ("get", "/chart"), ("post", "/checkout"), ("post", "/payment"), ("get", "/orders/{orderId}"),
        ("get", "/orders"), ("put", "/admin/stock/{sku}"), ("get", "/admin/stock/{sku}"),
        ("post", "/admin/stock/{sku}/adjustments"), ("post", "/admin/products"), ("patch", "/admin/products/{sku}"),
        ("post", "/admin/products:batchUpsert"), ("get", "/admin/products/{sku}/changes")}
    assert "security" not in ops[("get", "/catalogs")]
    assert ops[("post", "/payment")]["security"] == [{"bearer": []}]
    assert {p["name"] for p in ops[("get", "/catalogs")]["parameters"]} == {
        "page", "limit", "sortBy", "sortDir", "category", "search"}
    product = doc["components"]["schemas"]["Product"]
    assert product["required"] == ["sku", "name", "description", "category", "price", "sales", "available"]
    assert "paymentId" not in doc["components"]["schemas"]["Order"]["required"]
