"""A crowd of readers beyond Envoy's default circuit breakers gets its answers through the gateway, not 503s."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter

import httpx
import pytest

# Envoy's default circuit breakers let 1,024 requests per service through at once; this crowd is twice that.
CROWD = 2000
# The hot product page of a flash sale.
SKU = "EL-0001"


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_2000_readers_at_once_of_one_product_page_all_get_it(suite):
    start = asyncio.Event()
    tls = ssl.create_default_context()

    async def read() -> int | str:
        # A connection of its own per reader, as 2,000 browsers would have (one client each: a shared
        # httpx pool of 2,000 connections costs the client itself more than the gateway takes).
        # One TLS context for all (the gateway is plain HTTP here): each client would otherwise load the CA bundle
        # anew, 2,000 times, seconds of the test's own CPU on a busy machine.
        async with httpx.AsyncClient(base_url=suite.base_url, timeout=60, verify=tls) as client:
            await start.wait()
            try:
                resp = await client.get(f"/catalogs/{SKU}")
            except httpx.HTTPError as err:
                return f"{type(err).__name__}: {err}"
            return resp.status_code if resp.status_code == 200 else f"{resp.status_code} {resp.text[:200]}"

    readers = [asyncio.create_task(read()) for _ in range(CROWD)]
    await asyncio.sleep(0.5)
    started = time.monotonic()
    start.set()
    answers = Counter(await asyncio.gather(*readers))
    took = time.monotonic() - started
    print(f"{CROWD} readers at once: {dict(answers)} in {took:.1f} s")
    assert answers == {200: CROWD}, answers.most_common(5)
