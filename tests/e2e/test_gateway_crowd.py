"""A crowd of readers beyond Envoy's default circuit breakers gets its answers through the gateway, not 503s; and
readers of a product page are not refused while inventory, which every product page asks, stops for a few seconds."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from collections import Counter

import httpx
import pytest

from tests.proctable import descendants, signal_all

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


# How long inventory stops answering: longer than a Consul check's timeout (2 s), so that every instance of inventory
# fails its check, and than both attempts the catalog's call used to be allowed (2 s each: a pause of about 2.5 s on a
# busy machine, once in CI, refused dozens of the crowd above); well inside a product page's budget (10 s).
PAUSE = 5.0
# Shoppers reading the page over and over meanwhile: a steady load, so what the pause costs is not hidden by a queue
# (a crowd all at once, on a machine as busy as CI's, queues for most of the gateway's timeout without any pause).
READERS = 200


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_readers_ride_out_inventory_pausing_for_seconds(suite):
    """Every process of inventory (each of its instances) paused for PAUSE seconds while shoppers read the hot
    product page, as a host too busy to run them would: Consul says every instance fails, but the catalog keeps
    calling them (a pause is not a death, docs/operations.md), its calls wait within the page's budget, and no
    reader is refused."""
    supervisor = suite.processes["inventory"].pid
    # Its workers run in sessions of their own under the supervisor, each an instance in Consul.
    pids = [supervisor, *descendants(supervisor)]
    assert len(pids) > 2, pids
    stop = asyncio.Event()
    tls = ssl.create_default_context()  # one for all, as above
    answers: Counter = Counter()
    slowest = 0.0

    async def reader() -> None:
        nonlocal slowest
        async with httpx.AsyncClient(base_url=suite.base_url, timeout=60, verify=tls) as client:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    resp = await client.get(f"/catalogs/{SKU}")
                    answers[resp.status_code if resp.status_code == 200 else f"{resp.status_code} {resp.text[:200]}"] += 1
                except httpx.HTTPError as err:
                    answers[f"{type(err).__name__}: {err}"] += 1
                slowest = max(slowest, time.monotonic() - began)

    readers = [asyncio.create_task(reader()) for _ in range(READERS)]
    try:
        await asyncio.sleep(2.0)
        signal_all(pids, signal.SIGSTOP)
        try:
            await asyncio.sleep(PAUSE)
        finally:
            signal_all(pids, signal.SIGCONT)
        await asyncio.sleep(3.0)
    finally:
        stop.set()
        await asyncio.gather(*readers)
    print(f"{READERS} readers through a {PAUSE:.0f} s pause of inventory: {dict(answers)}, the slowest {slowest:.1f} s")
    assert answers.keys() == {200}, answers.most_common(5)
    # Reads were under way through the pause, and waited for its end.
    assert slowest >= PAUSE - 1.0, slowest
