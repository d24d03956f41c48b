"""Who is calling, decided at the gateway: tokens checked, identity headers only from the token, admin routes for admins."""

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.identity import JWKS, PRIVATE_KEY

PROTECTED = [
    ("GET", "/chart"), ("POST", "/chart"), ("PUT", "/chart/EL-0001/2"), ("POST", "/checkout"),
    ("POST", "/payment"), ("GET", "/orders"), ("GET", "/orders/o-1"),
    ("GET", "/admin/stock/EL-0001"), ("PUT", "/admin/stock/EL-0001"),
]


def _b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def bad_tokens(suite) -> dict[str, str]:
    good = suite.token("alice")
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    kid = json.loads((suite.secrets / JWKS).read_text())["keys"][0]["kid"]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    own_key = serialization.load_pem_private_key((suite.secrets / PRIVATE_KEY).read_bytes(), password=None)
    now = int(time.time())
    return {
        "garbage": "not-a-token",
        "expired": suite.token("alice", ttl=60, now=now - 3600),
        "tampered": ".".join([header, _b64(claims | {"sub": "mallory", "role": "admin"}), signature]),
        "alg none": ".".join([_b64({"alg": "none", "typ": "JWT"}), _b64(claims), ""]),
        "unknown key": jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": "someone-else"}),
        "known kid, other key": jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": kid}),
        "other issuer": jwt.encode(claims | {"iss": "elsewhere"}, own_key, algorithm="RS256", headers={"kid": kid}),
        "no expiry": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, own_key, algorithm="RS256",
                                headers={"kid": kid}),
    }


@pytest.mark.parametrize("method, path", PROTECTED)
def test_no_token_and_every_bad_token_is_401(http, suite, method, path):
    body = {} if method != "GET" else None
    resp = http.request(method, path, json=body)
    assert resp.status_code == 401
    assert resp.json()["details"][0]["reason"] == "UNAUTHENTICATED"
    for name, token in bad_tokens(suite).items():
        resp = http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401, name


def test_a_token_for_another_audience_is_refused(http, suite):
    claims = jwt.decode(suite.token("alice"), options={"verify_signature": False})
    own_key = serialization.load_pem_private_key((suite.secrets / PRIVATE_KEY).read_bytes(), password=None)
    kid = json.loads((suite.secrets / JWKS).read_text())["keys"][0]["kid"]
    token = jwt.encode(claims | {"aud": "bank"}, own_key, algorithm="RS256", headers={"kid": kid})
    resp = http.get("/orders", headers={"Authorization": f"Bearer {token}"})
    # Envoy: a well-signed token not issued for this API is forbidden rather than unauthenticated.
    assert resp.status_code == 403
    assert resp.json()["details"][0]["reason"] == "PERMISSION_DENIED"


def test_catalog_is_public(http):
    assert http.get("/catalogs", params={"limit": 1}).status_code == 200
    assert http.get("/catalogs/EL-0001").status_code == 200


def test_admin_routes_need_the_admin_role(http, suite):
    for role in (None, "customer", "Admin"):
        resp = http.get("/admin/stock/EL-0001", headers=suite.auth("bob", role))
        assert resp.status_code == 403, role
        assert resp.json()["details"][0]["reason"] == "PERMISSION_DENIED"
    resp = http.put("/admin/stock/EL-0001", json={"onHand": 1}, headers=suite.auth("bob"))
    assert resp.status_code == 403
    # the same RPC over gRPC through the gateway is closed too
    grpc_resp = http.post("/shop.inventory.v1.InventoryService/SetStock", content=b"\x00\x00\x00\x00\x00",
                          headers={"content-type": "application/grpc", **suite.auth("bob")})
    assert grpc_resp.status_code == 403 or grpc_resp.headers.get("grpc-status") == "7"
    # and path tricks do not get around it
    for path in ("/catalogs/../admin/stock/EL-0001", "//admin/stock/EL-0001"):
        assert http.get(path, headers=suite.auth("bob")).status_code in (403, 404)


def test_admin_sets_and_reads_stock_and_the_ledger_names_the_token_user(http, suite):
    import psycopg

    sku = "TO-0003"
    headers = suite.auth("ops-jane", "admin") | {"x-shop-user-id": "mallory", "x-shop-role": "admin"}
    before = http.get(f"/admin/stock/{sku}", headers=headers).json()
    assert set(before) == {"sku", "onHand", "reserved", "available", "setAside"}
    resp = http.put(f"/admin/stock/{sku}", json={"onHand": before["onHand"] + 7}, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"sku": sku, "onHand": before["onHand"] + 7, "reserved": before["reserved"],
                           "available": before["available"] + 7, "setAside": before["setAside"]}
    with psycopg.connect(suite.dsn) as conn:
        actor, delta = conn.execute("SELECT actor, on_hand_delta FROM inventory.ledger WHERE sku = %s"
                                    " ORDER BY id DESC LIMIT 1", (sku,)).fetchone()
    assert (actor, delta) == ("ops-jane", 7), "the actor comes from the token, never from a client header"
    assert http.get(f"/catalogs/{sku}").json()["available"] == before["available"] + 7


def test_a_client_sent_role_header_grants_nothing(http, suite):
    headers = suite.auth("bob") | {"x-shop-role": "admin"}
    assert http.get("/admin/stock/EL-0001", headers=headers).status_code == 403


async def test_setting_stock_below_what_is_held_is_409(http, suite):

    from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

    sku = "SP-0004"
    headers = suite.auth("ops", "admin")
    assert http.put(f"/admin/stock/{sku}", json={"onHand": 10}, headers=headers).status_code == 200
    async with suite.channel("inventory") as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        (held,) = (await stub.CreateHolds(inventory_pb2.CreateHoldsRequest(
            owner="cart:e2e", lines=[inventory_pb2.HoldLine(sku=sku, qty=6)], ttl_seconds=60))).holds
        try:
            resp = http.put(f"/admin/stock/{sku}", json={"onHand": 5}, headers=headers)
            assert resp.status_code == 409
            assert resp.json()["details"][0]["reason"] == "BELOW_RESERVED"
            assert http.get(f"/admin/stock/{sku}", headers=headers).json() == {
                "sku": sku, "onHand": 10, "reserved": 6, "available": 4, "setAside": 0}
        finally:
            await stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[held.hold_id]))


def test_admin_stock_errors(http, suite):
    headers = suite.auth("ops", "admin")
    resp = http.get("/admin/stock/NO-SUCH", headers=headers)
    assert resp.status_code == 404 and resp.json()["details"][0]["reason"] == "SKU_NOT_FOUND"
    resp = http.put("/admin/stock/EL-0002", json={"onHand": -1}, headers=headers)
    assert resp.status_code == 400
    resp = http.put("/admin/stock/EL-0002", content=b"{not json", headers=headers | {"content-type": "application/json"})
    assert resp.status_code == 400
    resp = http.put("/admin/stock/EL-0002", json={"onHand": "many"}, headers=headers)
    assert resp.status_code == 400
    resp = http.put("/admin/stock/EL-0002", json={"onHand": 5, "sku": "EL-0009"}, headers=headers)
    assert resp.status_code == 400, "a body field naming another SKU than the path is refused"
