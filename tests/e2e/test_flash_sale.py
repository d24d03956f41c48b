"""The flash sale: 300 buyers, 30 units, everyone at once; exactly 30 sell, all of them paid, nothing oversold."""

import asyncio
import time
import uuid

import httpx

SKU = "GR-0077"
UNITS = 30
BUYERS = 300


async def test_flash_sale(suite, http, audit_clean):
    admin = suite.auth("ops", "admin")
    assert http.put(f"/admin/stock/{SKU}", json={"onHand": UNITS}, headers=admin).status_code == 200
    sales_before = http.get(f"/catalogs/{SKU}").json()["sales"]
    buyers = [suite.auth(f"fan-{i}") for i in range(BUYERS)]
    limits = httpx.Limits(max_connections=BUYERS, max_keepalive_connections=BUYERS)
    async with httpx.AsyncClient(base_url=suite.base_url, timeout=60, limits=limits) as client:
        start = time.monotonic()
        gate = asyncio.Event()

        async def add(headers):
            await gate.wait()  # everyone at the same moment
            return await client.post("/chart", json={"sku": SKU, "qty": 1}, headers=headers)

        tasks = [asyncio.create_task(add(h)) for h in buyers]
        await asyncio.sleep(0.2)
        gate.set()
        answers = await asyncio.gather(*tasks)
        held_at = time.monotonic()
        statuses = [a.status_code for a in answers]
        winners = [h for h, a in zip(buyers, answers) if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 409]
        assert statuses.count(200) == UNITS, {s: statuses.count(s) for s in set(statuses)}
        assert len(refused) == BUYERS - UNITS
        assert all(a.json()["details"][0]["reason"] == "OUT_OF_STOCK" for a in refused)
        assert all(a.json()["details"][0]["metadata"]["available"] == "0" for a in refused)

        async def buy(headers):
            order = await client.post("/checkout", json={}, headers=headers | {"Idempotency-Key": uuid.uuid4().hex})
            assert order.status_code == 200, order.text
            body = order.json()
            paid = await client.post("/payment", json={"orderId": body["orderId"], "amount": body["total"],
                                                       "method": "card", "token": "tok_visa"},
                                     headers=headers | {"Idempotency-Key": uuid.uuid4().hex})
            assert paid.status_code == 200, paid.text
            return paid.json()

        paid = await asyncio.gather(*(buy(h) for h in winners))
        done = time.monotonic()
    assert all(p["status"] == "PAID" for p in paid)
    stock = http.get(f"/admin/stock/{SKU}", headers=admin).json()
    assert stock == {"sku": SKU, "onHand": 0, "reserved": 0, "available": 0, "setAside": 0}
    assert http.get(f"/catalogs/{SKU}").json()["sales"] == sales_before + UNITS
    assert audit_clean() == []
    print(f"flash sale: {BUYERS} buyers, {UNITS} units: {statuses.count(200)} held, {len(refused)} refused "
          f"in {held_at - start:.2f}s; {len(paid)} checked out and paid in {done - held_at:.2f}s")
