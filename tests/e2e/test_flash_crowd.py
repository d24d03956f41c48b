"""A flash-sale crowd through the gateway: 2,000 buyers at once on a 200-unit SKU, then the 200 winners check
out and pay at once. Exactly 200 held and sold, everyone else refused cleanly (409, or 429 from the gateway's
per-user limit), no 5xx and no timeout at any step, and the suite audit clean afterwards."""

import asyncio
import collections
import contextlib
import ssl
import time

import httpx

from tests.e2e.shop_client import post_until_admitted
from tests.audit import audit_dsn

SKU = "SP-0150"
UNITS = 200
BUYERS = 2_000
REFUSALS = {409: "OUT_OF_STOCK", 429: "RATE_LIMITED"}


def statuses(answers: list[httpx.Response]) -> dict:
    return dict(collections.Counter(a.status_code for a in answers))


def reasons(answers: list[httpx.Response]) -> set[str]:
    return {a.json()["details"][0]["reason"] for a in answers if a.status_code != 200}


async def test_2000_buyers_on_200_units_then_the_winners_check_out_and_pay_at_once(suite, http):
    admin = suite.auth("ops", "admin")
    assert http.put(f"/admin/stock/{SKU}", json={"onHand": UNITS}, headers=admin).status_code == 200
    sales_before = http.get(f"/catalogs/{SKU}").json()["sales"]
    buyers = [suite.auth(f"crowd-{i}") for i in range(BUYERS)]
    async with contextlib.AsyncExitStack() as stack:
        # A connection of its own per buyer, as 2,000 browsers have (one shared httpx pool of 2,000 connections
        # costs the test's own process more than the suite takes to answer).
        # One TLS context for all (the gateway is plain HTTP here; making 2,000 contexts would take a minute).
        tls = ssl.create_default_context()
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=suite.base_url, timeout=60, verify=tls))
                   for _ in buyers]
        gate = asyncio.Event()

        async def add(client, headers):
            await gate.wait()  # everyone at the same moment
            return await client.post("/chart", json={"sku": SKU, "qty": 1}, headers=headers)

        tasks = [asyncio.create_task(add(c, h)) for c, h in zip(clients, buyers)]
        await asyncio.sleep(0.5)
        start = time.monotonic()
        gate.set()
        added = await asyncio.gather(*tasks)
        held_at = time.monotonic()
        seen = statuses(added)
        assert set(seen) <= {200, *REFUSALS} and seen.get(200) == UNITS, seen
        assert reasons(added) <= set(REFUSALS.values()), reasons(added)
        winners = [(c, h) for c, h, a in zip(clients, buyers, added) if a.status_code == 200]

        checked_out = await asyncio.gather(*(post_until_admitted(c, "/checkout", h, {}) for c, h in winners))
        checked_at = time.monotonic()
        assert statuses(checked_out) == {200: UNITS}, {a.status_code: a.text for a in checked_out if a.status_code != 200}
        orders = [a.json() for a in checked_out]
        paid = await asyncio.gather(*(post_until_admitted(c, "/payment", h, {"orderId": o["orderId"], "amount": o["total"],
                                                              "method": "card", "token": "tok_visa"})
                                      for (c, h), o in zip(winners, orders)))
        paid_at = time.monotonic()
    assert statuses(paid) == {200: UNITS}, {a.status_code: a.text for a in paid if a.status_code != 200}
    assert all(p.json()["status"] == "PAID" for p in paid)
    stock = http.get(f"/admin/stock/{SKU}", headers=admin).json()
    assert stock == {"sku": SKU, "onHand": 0, "reserved": 0, "available": 0, "setAside": 0}
    assert http.get(f"/catalogs/{SKU}").json()["sales"] == sales_before + UNITS
    assert audit_dsn(suite.dsn) == []
    print(f"\ncrowd: {BUYERS} buyers on {UNITS} units: {seen} in {held_at - start:.2f}s; {UNITS} checkouts in "
          f"{checked_at - held_at:.2f}s; {UNITS} payments in {paid_at - checked_at:.2f}s")
