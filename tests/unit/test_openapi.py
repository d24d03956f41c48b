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
        ("post", "/admin/stock/{sku}/adjustments"), ("post", "/admin/campaigns"),
        ("post", "/admin/campaigns/{campaignId}:cancel"), ("get", "/admin/campaigns/{campaignId}"),
        ("get", "/admin/campaigns"), ("get", "/campaigns"), ("get", "/campaigns/{campaignId}"),
        ("post", "/admin/products"), ("patch", "/admin/products/{sku}"),
        ("post", "/admin/products:batchUpsert"), ("get", "/admin/products/{sku}/changes")}
    assert "security" not in ops[("get", "/catalogs")]
    assert ops[("post", "/payment")]["security"] == [{"bearer": []}]
    assert {p["name"] for p in ops[("get", "/catalogs")]["parameters"]} == {
        "page", "limit", "sortBy", "sortDir", "category", "search"}
    product = doc["components"]["schemas"]["Product"]
    assert product["required"] == ["sku", "name", "description", "category", "price", "sales", "available", "campaign"]
    # Product.campaign is a google.protobuf.Value on the wire: null, or a ProductCampaign's JSON.
    assert product["properties"]["campaign"] == {
        "nullable": True, "allOf": [{"$ref": "#/components/schemas/ProductCampaign"}]}
    assert doc["components"]["schemas"]["ProductCampaign"]["required"] == [
        "campaignId", "name", "status", "startsAt", "endsAt", "salePrice", "quota", "sold", "remaining", "maxPerUser"]
    assert "paymentId" not in doc["components"]["schemas"]["Order"]["required"]


def test_campaign_routes_are_documented_with_their_security_keys_and_shapes():
    doc = build(ROOT / "gen" / "shop.pb")
    ops = {(verb, path): op for path, item in doc["paths"].items() for verb, op in item.items()}
    assert "security" not in ops[("get", "/campaigns")] and "security" not in ops[("get", "/campaigns/{campaignId}")]
    for admin in (("post", "/admin/campaigns"), ("post", "/admin/campaigns/{campaignId}:cancel"),
                  ("get", "/admin/campaigns/{campaignId}"), ("get", "/admin/campaigns")):
        assert ops[admin]["security"] == [{"bearer": []}]
        assert "needs role admin" in ops[admin]["responses"]["403"]["description"]
    create = ops[("post", "/admin/campaigns")]
    assert {"name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255}} in create["parameters"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "name", "startsAt", "endsAt", "items"]
    schemas = doc["components"]["schemas"]
    assert schemas["NewCampaignItem"]["required"] == ["sku", "salePrice", "quota"]
    assert schemas["AdminCampaignItem"]["properties"]["refused"] == {
        "type": "object", "additionalProperties": {"type": "integer", "format": "int32"}}
    assert "cancelledAt" not in schemas["AdminCampaign"]["required"]
    assert schemas["PublicCampaign"]["required"] == [
        "campaignId", "name", "status", "startsAt", "endsAt", "serverTime", "items"]
    assert schemas["PublicCampaignItem"]["required"] == [
        "sku", "name", "price", "salePrice", "quota", "sold", "remaining", "maxPerUser"]
    assert {p["name"] for p in ops[("get", "/admin/campaigns")]["parameters"]} == {"status", "page", "limit"}
