"""Whole purchases through the gateway: shoppers each adding a unit of one SKU, checking out and paying, in turn."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

_LOGGER = logging.getLogger(__name__)

# The steps of one purchase, in order.
STEPS = ("add", "checkout", "payment")
# How long one request may take before it counts as a timeout (slow answers are measured, not dropped).
REQUEST_TIMEOUT_SECONDS = 30.0


@dataclass
class PurchaseRun:
    """What one run measured, step by step: latencies of the answers 200 and every answer's status."""

    seconds: float = 0.0
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    statuses: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in STEPS})

    def rate(self, step: str) -> float:
        """Answers 200 of `step` per second."""
        return len(self.latencies_ms[step]) / self.seconds if self.seconds else 0.0


async def _shopper(session: aiohttp.ClientSession, base_url: str, sku: str, tokens: list[str], run: PurchaseRun,
                   measuring: asyncio.Event, stop: asyncio.Event) -> None:
    """Buys one unit of `sku` after another, as each of `tokens`' users in turn; counts only while `measuring`."""
    turn = 0
    while not stop.is_set():
        headers = {"Authorization": f"Bearer {tokens[turn % len(tokens)]}"}
        turn += 1
        order: dict = {}
        for step in STEPS:
            if step == "add":
                path, body = "/chart", {"sku": sku, "qty": 1}
            elif step == "checkout":
                path, body = "/checkout", {}
            else:
                path, body = "/payment", {"orderId": order["orderId"], "amount": order["total"], "method": "card",
                                          "token": "tok_visa"}
            # Each request has a key of its own, as a storefront sends it; a refusal ends this purchase.
            started = time.monotonic()
            try:
                async with session.post(base_url + path, json=body,
                                        headers=headers | {"Idempotency-Key": uuid.uuid4().hex}) as resp:
                    answer = await resp.json(content_type=None)
                    status = str(resp.status)
                    retry_after = float(resp.headers.get("Retry-After", "0") or 0)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as err:
                status, answer, retry_after = f"error {type(err).__name__}", {}, 0.0
            elapsed_ms = (time.monotonic() - started) * 1000
            if measuring.is_set() and not stop.is_set():
                run.statuses[step][status] += 1
                if status == "200":
                    run.latencies_ms[step].append(elapsed_ms)
            if status != "200":
                if retry_after:
                    await asyncio.sleep(retry_after)
                break
            order = answer


async def _run(base_url: str, sku: str, tokens: list[str], shoppers: int, seconds: float,
               warmup_seconds: float) -> PurchaseRun:
    run = PurchaseRun()
    measuring, stop = asyncio.Event(), asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=shoppers)) as session:
        # Shopper i buys as users i, i + shoppers, ...: no two shoppers share a cart.
        tasks = [asyncio.create_task(_shopper(session, base_url, sku, tokens[i::shoppers], run, measuring, stop))
                 for i in range(shoppers)]
        await asyncio.sleep(warmup_seconds)
        measuring.set()
        started = time.monotonic()
        await asyncio.sleep(seconds)
        stop.set()
        run.seconds = time.monotonic() - started
        await asyncio.gather(*tasks, return_exceptions=True)
    return run


def run(base_url: str, sku: str, tokens: list[str], *, shoppers: int, seconds: float,
        warmup_seconds: float) -> PurchaseRun:
    """`shoppers` shoppers buying one unit of `sku` each time for `seconds` after `warmup_seconds`, rotating over
    the users of `tokens` (at least one per shopper)."""
    if len(tokens) < shoppers:
        raise ValueError(f"{shoppers} shoppers need at least as many users' tokens, not {len(tokens)}")
    return asyncio.run(_run(base_url, sku, tokens, shoppers, seconds, warmup_seconds))
