"""The opening instant of a flash sale, through the gateway of a suite with two replicas of every service: a
campaign of 200 units with maxPerUser 1 opens a few seconds ahead; 2,000 readers poll its product page for the
countdown until then, and at startsAt all 2,000 add it at once with the sale price as their expectedPrice.

Exactly 200 are held at the sale price, every other add is refused with SALE_SOLD_OUT (or RATE_LIMITED by the
gateway), nothing is held at the sale price before startsAt, no answer is a 5xx or a timeout; the 200 check out
and pay at once at the sale price and the campaign's report says so; after endsAt nothing of the quota is set
aside any more, and the suite audit is clean."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import psycopg
import pytest

from devstack import supervise
from devstack.postgres import create_database, dsn_for
from devstack.prepare import prepare
from gateway.identity import issue_token
from tests.e2e.shop_client import post_until_admitted
from tests.audit import audit_dsn
from tests.e2e.replicated import start_replicated

pytestmark = pytest.mark.e2e

SKU = "SP-0160"
ON_HAND = 1_000
QUOTA = 200
BUYERS = 2_000
# How far ahead the campaign opens: the readers' countdown.
OPENS_IN_SECONDS = 8
# How long it runs: the 200 winners check out and pay inside it.
RUNS_SECONDS = 40
# Each reader refreshes the product page this often while it waits (2,000 readers: about 700 reads a second).
POLL_SECONDS = 3.0
REFUSALS = {409: "SALE_SOLD_OUT", 429: "RATE_LIMITED"}


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parsed(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def reason(answer: httpx.Response) -> str:
    return answer.json()["details"][0]["reason"]


@pytest.fixture(scope="module")
def replicated(pg_admin_dsn, tmp_path_factory, tls_dir):
    """Two replicas of every service (one worker each) behind Envoy, the catalog's cache on as deployed."""
    run_dir = tmp_path_factory.mktemp("opening")
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    asyncio.run(prepare(dsn))
    secrets = run_dir / "secrets"
    ports, supervisor = start_replicated(dsn, run_dir, secrets, tls_dir, replicas=2,
                                         env={"CONSUL_CHECK_INTERVAL": "1s"})
    try:
        yield f"http://127.0.0.1:{ports.gateway}", secrets, dsn
    finally:
        supervise.stop(supervisor)


async def test_the_opening_instant_of_a_200_unit_campaign_with_2000_buyers(replicated):
    base, secrets, dsn = replicated
    admin = {"Authorization": f"Bearer {issue_token(secrets, 'ops', 'admin')}"}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        assert (await http.put(f"/admin/stock/{SKU}", json={"onHand": ON_HAND}, headers=admin)).status_code == 200
        product = (await http.get(f"/catalogs/{SKU}")).json()
        price, sales_before = product["price"], product["sales"]
        sale_price = price // 2
        now = parsed((await http.get("/campaigns")).json()["serverTime"])
        starts_at = now + timedelta(seconds=OPENS_IN_SECONDS)
        ends_at = starts_at + timedelta(seconds=RUNS_SECONDS)
        created = await http.post("/admin/campaigns", headers=admin | {"Idempotency-Key": uuid.uuid4().hex}, json={
            "name": "12.12 Midnight", "startsAt": rfc3339(starts_at), "endsAt": rfc3339(ends_at),
            "items": [{"sku": SKU, "salePrice": sale_price, "quota": QUOTA, "maxPerUser": 1}]})
        assert created.status_code == 200, created.text
        campaign = created.json()
        assert campaign["status"] == "SCHEDULED"
        campaign_id = campaign["campaignId"]

    early_bird = {"Authorization": f"Bearer {issue_token(secrets, 'early-bird')}"}
    buyers = [{"Authorization": f"Bearer {issue_token(secrets, f'opening-{i}')}"} for i in range(BUYERS)]
    reads: collections.Counter[int] = collections.Counter()
    seen_status: collections.Counter[str] = collections.Counter()
    async with contextlib.AsyncExitStack() as stack:
        tls = ssl.create_default_context()  # one for all: the gateway is plain HTTP here
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=60, verify=tls))
                   for _ in buyers]

        # The store's clock as a storefront learns it: serverTime minus the local time it arrived, the largest of a
        # few (the least delayed answer's). A buyer who goes by it adds at the opening instant or a little after.
        offset = float("-inf")
        for _ in range(5):
            answer = await clients[0].get(f"/campaigns/{campaign_id}")
            assert answer.status_code == 200, answer.text
            offset = max(offset, parsed(answer.json()["serverTime"]).timestamp() - time.time())

        async def at(instant: float) -> None:
            await asyncio.sleep(max(0.0, instant - offset - time.time()))

        # An early bird adds at the sale price before the opening (before the crowd comes, so the answer is not
        # held up behind it past startsAt): the units are not on sale yet, and it is told the regular price.
        too_early = await clients[0].post("/chart", json={"sku": SKU, "qty": 1, "expectedPrice": sale_price},
                                          headers=early_bird)
        answered_at = time.time() + offset
        assert answered_at < starts_at.timestamp(), "the early bird's add was answered after the opening"

        async def buyer(i: int) -> httpx.Response:
            # The countdown: the product page, refreshed until the opening is less than a poll away.
            await asyncio.sleep(POLL_SECONDS * i / BUYERS)
            while True:
                answer = await clients[i].get(f"/catalogs/{SKU}")
                reads[answer.status_code] += 1
                if answer.status_code == 200:
                    seen_status[(answer.json()["campaign"] or {}).get("status", "none")] += 1
                if time.time() + offset + POLL_SECONDS >= starts_at.timestamp():
                    break
                await asyncio.sleep(POLL_SECONDS)
            # Everyone at the opening instant by the store's clock (a tenth of a second after, to be sure).
            await at(starts_at.timestamp() + 0.1)
            return await clients[i].post("/chart", json={"sku": SKU, "qty": 1, "expectedPrice": sale_price},
                                         headers=buyers[i])

        opened = time.monotonic()
        added = await asyncio.gather(*(buyer(i) for i in range(BUYERS)))
        held_at = time.monotonic()
        seen = collections.Counter(a.status_code for a in added)
        assert set(reads) <= {200, 429}, reads
        assert set(seen) <= {200, *REFUSALS} and seen[200] == QUOTA, seen
        assert {reason(a) for a in added if a.status_code != 200} <= set(REFUSALS.values())
        assert too_early.status_code == 409 and reason(too_early) == "PRICE_CHANGED", too_early.text
        assert too_early.json()["details"][0]["metadata"]["price"] == str(price)
        winners = [(c, h, a.json()) for c, h, a in zip(clients, buyers, added) if a.status_code == 200]
        for _, _, cart in winners:
            (line,) = cart["items"]
            assert (line["sku"], line["qty"], line["price"], line["campaignId"]) == (SKU, 1, sale_price, campaign_id)

        orders = await asyncio.gather(*(post_until_admitted(c, "/checkout", h, {}) for c, h, _ in winners))
        assert collections.Counter(o.status_code for o in orders) == {200: QUOTA}, [o.text for o in orders][:3]
        assert {(o.json()["total"], o.json()["items"][0]["campaignId"]) for o in orders} == {(sale_price, campaign_id)}
        paid = await asyncio.gather(*(post_until_admitted(c, "/payment", h, {"orderId": o.json()["orderId"], "amount": sale_price,
                                                              "method": "card", "token": "tok_visa"})
                                      for (c, h, _), o in zip(winners, orders)))
        paid_at = time.monotonic()
    assert collections.Counter(p.status_code for p in paid) == {200: QUOTA}, [p.text for p in paid][:3]
    assert {p.json()["status"] for p in paid} == {"PAID"}

    with psycopg.connect(dsn) as conn:
        (early_holds,), = conn.execute(
            "SELECT count(*) FROM inventory.holds h JOIN inventory.campaigns c ON c.id = h.campaign_id"
            " WHERE c.id = %s AND h.created_at < c.starts_at", (campaign_id,)).fetchall()
    assert early_holds == 0

    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        report = (await http.get(f"/admin/campaigns/{campaign_id}", headers=admin)).json()
        (item,) = report["items"]
        assert (item["quota"], item["sold"], item["held"], item["remaining"], item["buyers"]) == (QUOTA, QUOTA, 0, 0,
                                                                                                 QUOTA)
        assert item["revenue"] == QUOTA * sale_price
        assert item["refused"].get("SALE_SOLD_OUT", 0) == sum(1 for a in added if a.status_code == 409)
        assert (await http.get(f"/catalogs/{SKU}")).json()["sales"] == sales_before + QUOTA
        # After endsAt, by the store's clock: nothing of the quota is set aside (here all of it was sold).
        while parsed((await http.get("/campaigns")).json()["serverTime"]) <= ends_at:
            await asyncio.sleep(0.5)
        stock = (await http.get(f"/admin/stock/{SKU}", headers=admin)).json()
        assert stock == {"sku": SKU, "onHand": ON_HAND - QUOTA, "reserved": 0, "available": ON_HAND - QUOTA,
                         "setAside": 0}
        assert (await http.get(f"/admin/campaigns/{campaign_id}", headers=admin)).json()["status"] == "ENDED"
    assert audit_dsn(dsn) == []
    print(f"\nopening instant: {BUYERS} readers polled {sum(reads.values())} times ({dict(reads)}, campaign status"
          f" seen {dict(seen_status)}); {BUYERS} adds at startsAt: {dict(seen)} in {held_at - opened:.2f}s (with"
          f" the countdown); {QUOTA} checkouts and payments at the sale price done {paid_at - held_at:.2f}s later")
