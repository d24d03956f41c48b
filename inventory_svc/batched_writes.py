"""The hot-SKU path: holds, resizes, releases and sales of one SKU decided together in one transaction per batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import cachetools
from psycopg_pool import AsyncConnectionPool

from inventory_svc import repository as repo
from inventory_svc.answers import IDEMPOTENCY_TABLE, decode_holds, encode
from inventory_svc.coalescer import Coalescer
from inventory_svc.model import HoldRecord, StockTake, hold_not_found
from shop_runtime import idempotency, metrics
from shop_runtime.clock import Clock
from shop_runtime.errors import ServiceError
from shop_runtime.reasons import refuse

_LOGGER = logging.getLogger(__name__)

# The most calls one coalesced transaction decides; the rest wait for the next one.
MAX_CALLS_PER_TRANSACTION = 200
# How many hold -> SKU lookups a process remembers (a hold's SKU never changes).
HOLD_SKU_CACHE = 100_000


@dataclass
class _Call:
    """One stock-changing call on its way into a transaction: its idempotency key and what it decides there."""

    operation: str
    key: str
    fingerprint: bytes
    actor: str
    skus: list[str]
    # Existing holds it names, read under the locks; buyers whose units it counts (None: no limit asked).
    hold_ids: list[str]
    buyers: list[str] | None
    decide: Callable[[StockTake], list[HoldRecord]]
    # Set by the coalescer as the call is queued, before anything reads it.
    future: asyncio.Future[list[HoldRecord]] = field(init=False, repr=False, compare=False)


def batch_failed() -> ServiceError:
    """UNAVAILABLE: the transaction a call was decided in did not commit; nothing of it took effect."""
    return refuse("STOCK_WRITE_FAILED",
                  "the stock change could not be written and did not take effect; retry with the same key")


class BatchedWrites:
    """The one transaction runner (`_decide`) of holds, resizes, releases and sales: it coalesces concurrent calls
    on the same SKU (inventory_svc.coalescer) and decides them against a StockTake (inventory_svc.model)."""

    def __init__(self, pool: AsyncConnectionPool, clock: Clock, max_calls: int = MAX_CALLS_PER_TRANSACTION):
        self._pool = pool
        self._clock = clock
        self._coalescer: Coalescer[_Call] = Coalescer(self._decide, max_calls)
        self._hold_skus: cachetools.LRUCache[str, str] = cachetools.LRUCache(HOLD_SKU_CACHE)

    @property
    def coalescer(self) -> Coalescer[_Call]:
        """The transactions run so far and the calls they decided (for metrics)."""
        return self._coalescer

    async def submit(self, operation: str, key: str, args: tuple[Any, ...], actor: str, skus: list[str],
                     decide: Callable[[StockTake], list[HoldRecord]], *, hold_ids: Sequence[str] = (),
                     buyers: list[str] | None = None) -> list[HoldRecord]:
        key = idempotency.check_key(key)
        call = _Call(operation, key, idempotency.fingerprint(operation, *args) if key else b"", actor, skus,
                     list(hold_ids), buyers, decide)
        return await self._coalescer.submit(skus, call)

    async def _decide(self, skus: list[str], calls: list[_Call]) -> None:
        """One transaction: claims the calls' keys, locks the SKUs, reclaims their expired holds, decides each call in
        order against what it finds, writes the end result and commits; then answers each call. Two round trips:
        everything up to the reads, then the writes with the COMMIT. A failure of the transaction fails its calls
        (and only them) with STOCK_WRITE_FAILED."""
        answers: dict[int, list[HoldRecord] | ServiceError] = {}
        replays: set[int] = set()
        try:
            # Pipeline mode: the statements whose answers are not needed to go on travel together: the key claims,
            # the lock, clock, reclaim and reads in one round trip, the writes with the COMMIT.
            async with self._pool.connection() as conn, conn.pipeline():
                async with conn.transaction():
                    keyed = [c for c in calls if c.key]
                    claims = await idempotency.claim_many(
                        conn, IDEMPOTENCY_TABLE, [(c.operation, c.key, c.fingerprint) for c in keyed]) if keyed else None
                    buyers = [b for c in calls if c.buyers is not None for b in c.buyers]
                    needs_units = any(c.buyers is not None for c in calls)
                    take = await repo.take_stock(conn, skus, [h for c in calls for h in c.hold_ids],
                                                 buyers if needs_units else None, self._clock.fixed(),
                                                 calls[0].actor)
                    stored = await claims() if claims is not None else {}
                    recorded: list[tuple[str, str, bytes]] = []
                    refused: list[tuple[str, str]] = []
                    for i, call in enumerate(calls):
                        earlier = stored.get((call.operation, call.key)) if call.key else None
                        if earlier is not None:
                            digest, response = earlier
                            answers[i] = (decode_holds(response) if digest == call.fingerprint
                                          else idempotency.reused(call.operation))
                            replays.add(i)
                            continue
                        try:
                            holds = call.decide(take)
                        except ServiceError as err:
                            answers[i] = err
                            if call.key:
                                refused.append((call.operation, call.key))
                            continue
                        answers[i] = holds
                        if call.key:
                            recorded.append((call.operation, call.key, encode(holds)))
                    await repo.write_take(conn, take)
                    await idempotency.record_many(conn, IDEMPOTENCY_TABLE, recorded, refused)
            metrics.HOLDS_EXPIRED.inc(take.reclaimed)
        except Exception:
            _LOGGER.exception("stock transaction for %s (%d call(s)) failed; none of them took effect",
                              ",".join(skus), len(calls))
            answers = {i: batch_failed() for i in range(len(calls))}
        metrics.TRANSACTION_CALLS.observe(len(calls))
        for i, call in enumerate(calls):
            answer = answers[i]
            outcome = answer.reason if isinstance(answer, ServiceError) else "REPLAYED" if i in replays else "OK"
            metrics.HOLD_CALLS.labels(call.operation, outcome).inc()
            if call.future.done():  # its waiter is gone (the process is stopping)
                continue
            if isinstance(answer, ServiceError):
                call.future.set_exception(answer)
            else:
                for hold in answer:
                    self._hold_skus[hold.id] = hold.sku
                call.future.set_result(answer)

    async def skus_of(self, ids: list[str]) -> dict[str, str]:
        """hold id -> SKU (a hold's SKU never changes, so remembered); HOLD_NOT_FOUND for an unknown hold."""
        found = {i: self._hold_skus[i] for i in ids if i in self._hold_skus}
        if missing := [i for i in ids if i not in found]:
            async with self._pool.connection() as conn:
                found |= await repo.hold_skus(conn, missing)
            for i in missing:
                if i not in found:
                    raise hold_not_found(i)
                self._hold_skus[i] = found[i]
        return found
