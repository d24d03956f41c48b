"""A storefront's view of the REST API, for the e2e tests."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import httpx


class Shopper:
    """One signed-in user of the storefront."""

    def __init__(self, http: httpx.Client, suite, user: str | None = None):
        self.user = user or f"user-{uuid.uuid4().hex[:8]}"
        self.http = http
        self.headers = suite.auth(self.user)

    def add(self, sku: str, qty: int) -> httpx.Response:
        return self.http.post("/chart", json={"sku": sku, "qty": qty}, headers=self.headers)

    def set(self, sku: str, qty: int) -> httpx.Response:
        return self.http.put(f"/chart/{sku}/{qty}", headers=self.headers)

    def cart(self) -> dict:
        resp = self.http.get("/chart", headers=self.headers)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def checkout(self, key: str | None = None) -> httpx.Response:
        headers = self.headers | ({"Idempotency-Key": key} if key else {})
        return self.http.post("/checkout", json={}, headers=headers)

    def pay(self, order_id: str, amount: int, key: str | None = None, token: str = "tok_visa") -> httpx.Response:
        return self.http.post("/payment", json={"orderId": order_id, "amount": amount, "method": "card",
                                                "token": token},
                              headers=self.headers | {"Idempotency-Key": key or uuid.uuid4().hex})

    def order(self, order_id: str) -> httpx.Response:
        return self.http.get(f"/orders/{order_id}", headers=self.headers)

    def orders(self, **params) -> httpx.Response:
        return self.http.get("/orders", params=params, headers=self.headers)


def reason(resp: httpx.Response) -> str:
    """The ErrorInfo reason of an error answer."""
    return resp.json()["details"][0]["reason"]


def seconds(rfc3339: str) -> float:
    """An RFC 3339 time of an answer as a POSIX timestamp."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def post_until_admitted(client: httpx.AsyncClient, path: str, headers: dict, body: dict) -> httpx.Response:
    """A state change as a storefront sends it in a crowd: one Idempotency-Key, sent again after the Retry-After of
    a refusal by the per-user rate limit (429), until another answer comes."""
    key = uuid.uuid4().hex
    while True:
        answer = await client.post(path, json=body, headers=headers | {"Idempotency-Key": key})
        if answer.status_code != 429:
            return answer
        await asyncio.sleep(float(answer.headers["retry-after"]))
