"""Calls on one hot SKU that arrive while a transaction for it runs are decided together by the next one.

A flash sale sends hundreds of holds for the same SKU at once, and every one of them must take that
SKU's advisory lock: one transaction per call makes the lock the limit (a few round trips to Postgres
each, one after another). Here the calls of one SKU queue in arrival order; while a transaction for the
SKU runs in this process, the calls that arrive wait, and the next transaction takes them all and
decides them one after another (each still all or nothing), then commits once. A call alone starts its
transaction at once: nothing waits on a timer. Written here because this is the service's own locking
rule, not a general task queue: no library batches by key with these guarantees.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Awaitable, Callable, Generic, Protocol, TypeVar

_LOGGER = logging.getLogger(__name__)


class Queued(Protocol):
    """What the coalescer needs of a call: its idempotency identity and the future that answers it."""

    operation: str
    key: str
    future: asyncio.Future


CallT = TypeVar("CallT", bound=Queued)


class Coalescer(Generic[CallT]):
    """Runs calls of one SKU in transactions, each taking every call queued while the one before it ran.

    `run(skus, calls)` decides and commits one transaction and sets every call's future; a call touching
    several SKUs runs in a transaction of its own (its locks are taken in sorted order there).
    """

    def __init__(self, run: Callable[[list[str], list[CallT]], Awaitable[None]], max_calls: int):
        self._run = run
        self._max_calls = max_calls
        self._queues: dict[str, deque[CallT]] = {}
        self._tasks: set[asyncio.Task] = set()
        # Transactions and calls run so far, for the metrics and the tests.
        self.transactions = 0
        self.calls = 0

    async def submit(self, skus: list[str], call: CallT) -> Any:
        """Queues `call` on its SKU and waits for its answer (raised if it was refused)."""
        call.future = asyncio.get_running_loop().create_future()
        if len(skus) != 1:
            await self._transaction(sorted(set(skus)), [call])
        else:
            (sku,) = skus
            queue = self._queues.get(sku)
            if queue is None:
                queue = self._queues[sku] = deque()
                task = asyncio.create_task(self._drain(sku, queue), name=f"stock-{sku}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            queue.append(call)
        return await call.future

    async def _drain(self, sku: str, queue: deque[CallT]) -> None:
        """Runs transactions for `sku` until no call is waiting, then lets the SKU go."""
        try:
            while queue:
                await self._transaction([sku], self._next_batch(queue))
        finally:
            del self._queues[sku]

    def _next_batch(self, queue: deque[CallT]) -> list[CallT]:
        """The calls of the next transaction, in arrival order. A second call with a key already in the batch
        (a retry arriving while the first is queued) waits for the next one, where it finds the first's answer."""
        batch: list[CallT] = []
        keys: set[tuple[str, str]] = set()
        later: list[CallT] = []
        while queue and len(batch) < self._max_calls:
            call = queue.popleft()
            identity = (call.operation, call.key)
            if call.key and identity in keys:
                later.append(call)
                continue
            keys.add(identity)
            batch.append(call)
        queue.extendleft(reversed(later))
        return batch

    async def _transaction(self, skus: list[str], calls: list[CallT]) -> None:
        self.transactions += 1
        self.calls += len(calls)
        try:
            await self._run(skus, calls)
        except Exception as err:  # the runner answers every call itself; this is a last resort, never silent
            _LOGGER.exception("stock transaction for %s failed outside its own handling", ",".join(skus))
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(err)
