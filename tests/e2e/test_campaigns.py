"""Flash-sale campaigns through Envoy's REST port: created by an admin (the catalog's checks, then inventory's), their
quota leaving `available`, shown on product pages and GET /campaigns, cancelled with the quota back; every refusal
with its reason and metadata, changing nothing; admin routes closed to shoppers and strangers; bad input a 4xx."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from devstack.demo_data import generate
from tests.e2e.shop_client import seconds

# Demo books with stock that no other e2e test uses, one per use; every campaign made here is cancelled after its
# test, so other tests see the demo stock.
_SKUS = iter([p for p in generate() if p.sku.startswith("BO-") and 100 < int(p.sku[3:]) <= 180 and p.on_hand >= 30])
_NAMES = itertools.count(1)
PUBLIC_FIELDS = {"campaignId", "name", "status", "startsAt", "endsAt", "serverTime", "items"}
PUBLIC_ITEM = {"sku", "name", "price", "salePrice", "quota", "sold", "remaining", "maxPerUser"}
PRODUCT_CAMPAIGN = {"campaignId", "name", "status", "startsAt", "endsAt", "salePrice", "quota", "sold", "remaining",
                    "maxPerUser"}


def fresh():
    return next(_SKUS)


def iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def info(resp) -> dict:
    details = [d for d in resp.json()["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert len(details) == 1, resp.text
    return details[0]


def refused(resp, status: int, reason: str) -> dict:
    """The metadata of a refusal with this status and reason."""
    assert resp.status_code == status, resp.text
    assert info(resp)["reason"] == reason, resp.text
    return info(resp).get("metadata", {})


@pytest.fixture
def admin(suite):
    return suite.auth("admin-campaigns", "admin")


@pytest.fixture
def db_now(suite):
    def now() -> datetime:
        with psycopg.connect(suite.dsn) as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            return row[0]
    return now


@pytest.fixture
def campaigns(http, admin, db_now):
    """Creates campaigns (an hour from now for an hour, unless told) and cancels every one after the test."""
    made: list[str] = []

    def create(*items, starts_in: float = 3600, lasts: float = 3600, key: str | None = None, name: str | None = None,
               body: dict | None = None):
        starts = db_now() + timedelta(seconds=starts_in)
        body = body or {"name": name or f"e2e {next(_NAMES)}", "startsAt": iso(starts),
                        "endsAt": iso(starts + timedelta(seconds=lasts)),
                        "items": [{"sku": p.sku, "salePrice": p.price // 2, "quota": q, "maxPerUser": 2}
                                  for p, q in items]}
        resp = http.post("/admin/campaigns", json=body, headers=admin | ({"Idempotency-Key": key} if key else {}))
        if resp.status_code == 200:
            made.append(resp.json()["campaignId"])
        return resp

    yield create
    for campaign_id in made:
        assert http.post(f"/admin/campaigns/{campaign_id}:cancel", json={}, headers=admin).status_code == 200


def available(http, sku: str) -> int:
    resp = http.get(f"/catalogs/{sku}")
    assert resp.status_code == 200, resp.text
    return resp.json()["available"]


def test_a_campaign_sets_its_quota_aside_shows_on_product_pages_and_cancel_gives_it_back(http, admin, campaigns,
                                                                                         audit_clean):
    p = fresh()
    before = http.get(f"/catalogs/{p.sku}").json()
    assert before["campaign"] is None
    resp = campaigns((p, 20))
    assert resp.status_code == 200, resp.text
    created = resp.json()
    assert created["status"] == "SCHEDULED" and created["createdBy"] == "admin-campaigns"
    (item,) = created["items"]
    assert item == {"sku": p.sku, "name": p.name, "price": p.price, "salePrice": p.price // 2, "quota": 20,
                    "maxPerUser": 2, "held": 0, "sold": 0, "remaining": 20, "returned": 0, "revenue": 0,
                    "buyers": 0, "refused": {}}

    page = http.get(f"/catalogs/{p.sku}").json()
    assert page["available"] == before["available"] - 20
    assert page["campaign"] == {"campaignId": created["campaignId"], "name": created["name"], "status": "SCHEDULED",
                                "startsAt": created["startsAt"], "endsAt": created["endsAt"],
                                "salePrice": p.price // 2, "quota": 20, "sold": 0, "remaining": 20, "maxPerUser": 2}
    # Numbers print as JSON integers (a google.protobuf.Value carries them as doubles).
    assert all(type(page["campaign"][f]) is int for f in ("salePrice", "quota", "sold", "remaining", "maxPerUser"))
    # The listing shows the same object, and null for the others.
    listed = {}
    for n in range(1, 4):
        body = http.get("/catalogs", params={"category": "books", "limit": 100, "page": n, "sortBy": "name"}).json()
        listed |= {i["sku"]: i for i in body["items"]}
    assert listed[p.sku]["campaign"] == page["campaign"] and listed[p.sku]["available"] == page["available"]
    assert all(i["campaign"] is None for sku, i in listed.items() if sku != p.sku)

    figures = http.get(f"/admin/campaigns/{created['campaignId']}", headers=admin)
    assert figures.status_code == 200 and figures.json()["items"] == created["items"]
    public = http.get(f"/campaigns/{created['campaignId']}")
    assert public.status_code == 200 and set(public.json()) == PUBLIC_FIELDS
    assert public.json()["items"] == [{"sku": p.sku, "name": p.name, "price": p.price, "salePrice": p.price // 2,
                                       "quota": 20, "sold": 0, "remaining": 20, "maxPerUser": 2}]

    cancelled = http.post(f"/admin/campaigns/{created['campaignId']}:cancel", json={}, headers=admin)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["items"][0]["returned"] == 20 and "cancelledAt" in cancelled.json()
    after = http.get(f"/catalogs/{p.sku}").json()
    assert after["available"] == before["available"] and after["campaign"] is None
    refused(http.get(f"/campaigns/{created['campaignId']}"), 404, "CAMPAIGN_NOT_FOUND")
    assert http.get(f"/admin/campaigns/{created['campaignId']}", headers=admin).json()["status"] == "CANCELLED"
    assert audit_clean() == []


def test_a_campaign_whose_start_has_passed_is_live_on_its_product_page(http, admin, campaigns, db_now):
    p = fresh()
    resp = campaigns((p, 5), starts_in=1.5, lasts=600)
    assert resp.status_code == 200 and resp.json()["status"] == "SCHEDULED"
    deadline = db_now() + timedelta(seconds=10)
    while http.get(f"/catalogs/{p.sku}").json()["campaign"]["status"] != "LIVE":
        assert db_now() < deadline, "never turned LIVE"
        time.sleep(0.05)
    assert seconds(resp.json()["startsAt"]) <= db_now().timestamp()
    assert http.get(f"/campaigns/{resp.json()['campaignId']}").json()["status"] == "LIVE"
    live = http.get("/admin/campaigns", params={"status": "LIVE", "limit": 100}, headers=admin).json()
    assert resp.json()["campaignId"] in {c["campaignId"] for c in live["campaigns"]}
    # A campaign whose start has passed when it is created is LIVE at once.
    at_once = campaigns((fresh(), 2), starts_in=-60, lasts=600)
    assert at_once.status_code == 200 and at_once.json()["status"] == "LIVE", at_once.text
    # Cancelling a live campaign (no body at all) ends it now: ENDED, and its product page shows none.
    ended = http.post(f"/admin/campaigns/{resp.json()['campaignId']}:cancel", headers=admin).json()
    assert ended["status"] == "ENDED" and http.get(f"/catalogs/{p.sku}").json()["campaign"] is None


def test_the_public_list_is_soonest_first_within_24_hours_with_the_database_clock(http, campaigns, db_now):
    later, sooner, far = fresh(), fresh(), fresh()
    ids = [campaigns((p, 1), starts_in=s).json()["campaignId"] for p, s in ((later, 3 * 3600), (sooner, 3600),
                                                                          (far, 30 * 3600))]
    t0 = db_now()
    resp = http.get("/campaigns")
    t1 = db_now()
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"campaigns", "serverTime"}
    assert t0.timestamp() - 0.5 <= seconds(body["serverTime"]) <= t1.timestamp() + 0.5
    shown = [c["campaignId"] for c in body["campaigns"]]
    assert ids[2] not in shown  # starts in 30 hours
    assert shown.index(ids[1]) < shown.index(ids[0])
    starts = [seconds(c["startsAt"]) for c in body["campaigns"]]
    assert starts == sorted(starts)
    for c in body["campaigns"]:
        assert set(c) == PUBLIC_FIELDS and all(set(i) == PUBLIC_ITEM for i in c["items"])


def test_every_refusal_has_its_reason_and_metadata_and_changes_nothing(http, admin, campaigns, db_now):
    p, q = fresh(), fresh()
    before = available(http, p.sku), available(http, q.sku)
    now = db_now()

    def body(**over):
        b = {"name": "refused", "startsAt": iso(now + timedelta(hours=1)), "endsAt": iso(now + timedelta(hours=2)),
             "items": [{"sku": p.sku, "salePrice": 1000, "quota": 1, "maxPerUser": 0}]}
        return b | over

    def post(b):
        return http.post("/admin/campaigns", json=b, headers=admin)

    assert refused(post(body(items=[{"sku": "NO-0000", "salePrice": 1, "quota": 1}])), 404,
                   "PRODUCT_NOT_FOUND") == {"sku": "NO-0000"}
    # A NUL, which Postgres cannot take: still a plain refusal, never a 5xx.
    assert refused(post(body(items=[{"sku": "BO-\u0000", "salePrice": 1, "quota": 1}])), 404,
                   "PRODUCT_NOT_FOUND") == {"sku": "BO-\u0000"}
    assert refused(post(body(name="a\u0000b")), 400, "INVALID_ARGUMENT") == {"field": "name"}
    for sale_price in (0, -1, p.price, p.price + 1):
        item = {"sku": p.sku, "salePrice": sale_price, "quota": 1}
        assert refused(post(body(items=[{"sku": q.sku, "salePrice": 1, "quota": 1}, item])), 400,
                       "INVALID_ARGUMENT") == {"field": "items[1].salePrice"}, sale_price
    assert refused(post(body(items=[])), 400, "INVALID_ARGUMENT") == {"field": "items"}
    twice = [{"sku": p.sku, "salePrice": 1, "quota": 1}] * 2
    assert refused(post(body(items=twice)), 400, "INVALID_ARGUMENT") == {"field": "items[1].sku"}
    # Inventory's rules, each naming its field.
    window = {
        "endsAt": [body(endsAt=iso(now + timedelta(minutes=30))),  # before startsAt
                   body(startsAt=iso(now - timedelta(hours=2)), endsAt=iso(now - timedelta(hours=1))),  # past
                   body(endsAt=iso(now + timedelta(days=8)))],  # longer than 7 days
        "name": [body(name="")],
        "items[0].quota": [body(items=[{"sku": p.sku, "salePrice": 1, "quota": 0}])],
        "items[0].maxPerUser": [body(items=[{"sku": p.sku, "salePrice": 1, "quota": 1, "maxPerUser": -1}])],
    }
    for field, bodies in window.items():
        for b in bodies:
            assert refused(post(b), 400, "INVALID_ARGUMENT").get("field") == field, b
    short = refused(post(body(items=[{"sku": p.sku, "salePrice": 1, "quota": before[0] + 1}])), 409, "OUT_OF_STOCK")
    assert short["available"] == str(before[0]) and short["sku"] == p.sku
    assert (available(http, p.sku), available(http, q.sku)) == before

    first = campaigns((p, 2))
    assert first.status_code == 200
    overlap = refused(campaigns((q, 1), (p, 1), starts_in=3600 + 1800), 409, "CAMPAIGN_OVERLAP")
    assert overlap == {"sku": p.sku, "campaignId": first.json()["campaignId"]}
    assert (available(http, p.sku), available(http, q.sku)) == (before[0] - 2, before[1])

    unknown = str(uuid.uuid4())
    for resp in (http.get(f"/admin/campaigns/{unknown}", headers=admin),
                 http.post(f"/admin/campaigns/{unknown}:cancel", json={}, headers=admin),
                 http.get(f"/campaigns/{unknown}"), http.get("/campaigns/not-a-uuid")):
        assert refused(resp, 404, "CAMPAIGN_NOT_FOUND").get("campaignId") in (unknown, "not-a-uuid")


def test_admin_routes_need_an_admin_and_public_routes_are_open(http, suite):
    shopper = suite.auth("shopper-campaigns")
    some = str(uuid.uuid4())
    admin_routes = [("post", "/admin/campaigns", {"name": "x"}), ("post", f"/admin/campaigns/{some}:cancel", {}),
                    ("get", f"/admin/campaigns/{some}", None), ("get", "/admin/campaigns", None)]
    for method, path, body in admin_routes:
        assert http.request(method, path, json=body).status_code == 401, path
        assert http.request(method, path, json=body, headers=shopper).status_code == 403, path
    assert http.get("/campaigns").status_code == 200
    assert http.get(f"/campaigns/{some}").status_code == 404


@pytest.mark.parametrize("raw", [
    b"{not json", b"[]", b'{"name": "x", "startsAt": "yesterday"}', b'{"name": "x", "endsAt": 5}',
    b'{"name": 5}', b'{"items": {"sku": "BO-0101"}}', b'{"items": [{"sku": "BO-0101", "quota": "many"}]}',
    b'{"items": [{"sku": "BO-0101", "salePrice": 1.5}]}', b'{"items": [{"sku": "BO-0101", "quota": 99999999999}]}',
    b"{}",
])
def test_bad_bodies_are_400_never_5xx_and_change_nothing(http, admin, raw):
    before = available(http, "BO-0101")
    resp = http.post("/admin/campaigns", content=raw, headers=admin | {"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert info(resp)["reason"]
    assert available(http, "BO-0101") == before


@pytest.mark.parametrize("query", ["status=BOGUS", "page=0", "limit=101", "page=x", "status=5", "status=2",
                                   "status=live"])
def test_bad_admin_list_parameters_are_400(http, admin, query):
    resp = http.get(f"/admin/campaigns?{query}", headers=admin)
    assert resp.status_code == 400, resp.text


def test_a_resend_with_the_same_key_creates_once_and_without_a_key_is_stopped_by_the_overlap(http, admin, campaigns,
                                                                                               db_now):
    p = fresh()
    before = available(http, p.sku)
    starts = db_now() + timedelta(hours=2)
    body = {"name": "resent", "startsAt": iso(starts), "endsAt": iso(starts + timedelta(hours=1)),
            "items": [{"sku": p.sku, "salePrice": p.price // 2, "quota": 3}]}
    key = uuid.uuid4().hex
    first = campaigns(key=key, body=body)
    second = campaigns(key=key, body=body)
    assert first.status_code == second.status_code == 200
    assert first.json()["campaignId"] == second.json()["campaignId"]
    assert available(http, p.sku) == before - 3
    # The same key with another body is refused, and changes nothing.
    refused(campaigns(key=key, body=body | {"name": "another"}), 409, "IDEMPOTENCY_KEY_REUSED")
    assert available(http, p.sku) == before - 3
    # Without a key, a resend of a created campaign is stopped by the overlap with it.
    q = fresh()
    body = body | {"items": [{"sku": q.sku, "salePrice": q.price // 2, "quota": 1}]}
    created = campaigns(body=body)
    assert created.status_code == 200
    assert refused(campaigns(body=body), 409, "CAMPAIGN_OVERLAP") == {"sku": q.sku,
                                                                       "campaignId": created.json()["campaignId"]}


def test_the_admin_list_filters_by_status_and_pages(http, admin, campaigns):
    ids = {campaigns((fresh(), 1), starts_in=3600 * (40 + n)).json()["campaignId"] for n in range(3)}
    listed = http.get("/admin/campaigns", params={"status": "SCHEDULED", "limit": 100}, headers=admin)
    assert listed.status_code == 200
    body = listed.json()
    assert ids <= {c["campaignId"] for c in body["campaigns"]}
    assert all(c["status"] == "SCHEDULED" for c in body["campaigns"])
    assert (body["page"], body["limit"]) == (1, 100) and body["total"] >= 3 and "serverTime" in body
    one = http.get("/admin/campaigns", params={"limit": 1, "page": 2}, headers=admin).json()
    assert len(one["campaigns"]) == 1 and one["page"] == 2
