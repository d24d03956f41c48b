"""A flash sale for fault tests: shoppers buying all along through the gateway of a running suite, every answer kept
with the moment it came, and the checks that nothing was lost once the faults are over.

A suite here is anything with `base` (the gateway's URL), `secrets` (the token issuer's keys) and `dsn` (its
database): the local suite of tests/e2e/test_faults.py, or the hosts of tests/e2e/test_hosts.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Protocol

import httpx
import psycopg

from gateway.identity import issue_token
from tests.audit import audit_dsn

SKU = "HE-0042"
SHOPPERS = 24
# A payment cut off after the provider charged leaves its order awaiting payment until its window ends; then the
# order's reconciler expires it and refunds the charge. A short window lets the audit see that within the test.
PAYMENT_WINDOW_SECONDS = 15
# The answers a shopper may get in a sale that goes right: done, sold out, the per-user limit, or a key reused.
EXPECTED = {200, 409, 429}


class Suite(Protocol):
    """What a sale needs to know of the suite it runs against."""

    base: str
    secrets: Path
    dsn: str


class Sale:
    """Shoppers that add one unit, check out and pay, over and over, through the gateway; every answer is kept
    with the moment it came."""

    def __init__(self, stack: Suite):
        self.stack = stack
        self.answers: list[tuple[float, str, int]] = []  # (when, step, status)
        self.details: list[str] = []  # what each unexpected answer said, with how long it took
        self.unexpected: list[tuple[float, float, str, int]] = []  # (sent, answered, step, status) of those
        # The shoppers' own record of what they were told: every order whose payment was answered 200 (PAID).
        self.paid: set[str] = set()
        self._stop = asyncio.Event()

    async def _shopper(self, i: int) -> None:
        headers = {"Authorization": f"Bearer {issue_token(self.stack.secrets, f'fault-{uuid.uuid4().hex[:6]}-{i}')}"}
        async with httpx.AsyncClient(base_url=self.stack.base, timeout=60) as client:
            while not self._stop.is_set():
                added = await self._step(client, "add", "/chart", {"sku": SKU, "qty": 1}, headers)
                if added != 200:
                    await asyncio.sleep(0.05)
                    continue
                key = uuid.uuid4().hex
                started = time.monotonic()
                order = await client.post("/checkout", json={}, headers=headers | {"Idempotency-Key": key})
                self._keep(started, "checkout", order.status_code,
                           f"[{order.headers.get('x-request-id')}] {order.text}")
                if order.status_code != 200:
                    continue
                body = order.json()
                paid = await self._step(client, "pay", "/payment", {"orderId": body["orderId"],
                                                                    "amount": body["total"], "method": "card",
                                                                    "token": "tok_visa"},
                                        headers | {"Idempotency-Key": uuid.uuid4().hex})
                if paid == 200:
                    self.paid.add(body["orderId"])

    async def _step(self, client, step: str, path: str, body: dict, headers: dict) -> int:
        started = time.monotonic()
        try:
            resp = await client.post(path, json=body, headers=headers)
            status, text = resp.status_code, f"[{resp.headers.get('x-request-id')}] {resp.text}"
        except httpx.HTTPError as err:
            status, text = 0, repr(err)  # no answer at all
        self._keep(started, step, status, text)
        return status

    def _keep(self, started: float, step: str, status: int, text: str) -> None:
        now = time.monotonic()
        self.answers.append((now, step, status))
        if status not in EXPECTED:
            self.unexpected.append((started, now, step, status))
            self.details.append(f"{step} {status} after {now - started:.1f}s: {text[:300]}")

    async def run(self, during) -> None:
        """Shops while `during()` (a coroutine function: the faults) runs, and a few seconds more."""
        shoppers = [asyncio.create_task(self._shopper(i)) for i in range(SHOPPERS)]
        await asyncio.sleep(3)
        await during()
        await asyncio.sleep(5)
        self._stop.set()
        await asyncio.gather(*shoppers)

    def failures_sent(self, since: float) -> list[tuple[float, float, str, int]]:
        """The requests sent at or after `since` that were not answered as they should be."""
        return [f for f in self.unexpected if f[0] >= since]

    def failures(self, since: float = 0.0) -> list[tuple[float, str, int]]:
        return [a for a in self.answers if a[0] >= since and a[2] not in EXPECTED]

    def first(self, step: str, since: float) -> float | None:
        """When the first 200 to `step` came after `since`."""
        return min((t for t, s, status in self.answers if s == step and status == 200 and t >= since), default=None)


def paid_orders_kept(sale: Sale, dsn: str) -> int:
    """Checks that every order a shopper was told is PAID is PAID in the database now (after the faults); returns
    how many there were."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id::text, status FROM orders.orders WHERE id::text = ANY(%s)",
                            (sorted(sale.paid),)).fetchall()
    found = dict(rows)
    lost = {o: found.get(o, "missing") for o in sale.paid if found.get(o) != "PAID"}
    assert not lost, f"{len(lost)} of {len(sale.paid)} orders acknowledged PAID are not PAID: {sorted(lost.items())[:10]}"
    return len(sale.paid)


def restock(stack: Suite, units: int) -> None:
    token = issue_token(stack.secrets, "ops", "admin")
    resp = httpx.put(f"{stack.base}/admin/stock/{SKU}", json={"onHand": units},
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text


def settled_and_clean(stack: Suite) -> None:
    """Waits for the reconcilers to repair what the faults left (a cut-off payment's charge is refunded once its
    order's window has passed), then the suite audit must be clean."""
    deadline = time.monotonic() + PAYMENT_WINDOW_SECONDS + 60
    while (violations := audit_dsn(stack.dsn)) and time.monotonic() < deadline:
        time.sleep(1)
    assert violations == []
    with psycopg.connect(stack.dsn) as conn:
        (on_hand, reserved), = conn.execute("SELECT on_hand, reserved FROM inventory.stock WHERE sku = %s",
                                            (SKU,)).fetchall()
    assert 0 <= reserved <= on_hand


