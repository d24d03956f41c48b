"""A short-lived, size-bounded cache of answers in which concurrent misses of one key share one load."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

from cachetools import TLRUCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# A timer in seconds that never goes back (time.monotonic, or a fake in tests).
Timer = Callable[[], float]


@dataclass(frozen=True)
class Fresh(Generic[V]):
    """A loaded answer and the timer reading when the reads behind it began: its age counts from then."""

    value: V
    as_of: float


class AnswerCache(Generic[K, V]):
    """Keeps each key's answer for `ttl` seconds from when its load began, at most `maxsize` answers
    (the least recently used go first). Concurrent misses of one key share one load; a failed load is
    not kept, so the next call loads again. A `ttl` of 0 turns it off: every call loads.

    cachetools keeps the entries (expiry, size bound, eviction); it has no single-flight for coroutines
    (its `cached(condition=...)` guards threads), so the sharing of loads in flight is the few lines below.
    """

    def __init__(self, ttl: float, maxsize: int, timer: Timer = time.monotonic):
        self._ttl = ttl
        self._timer = timer
        # A TLRU rather than a TTL cache: an entry's life counts from its load's start (Fresh.as_of), not from
        # when it was stored, so no answer is served more than `ttl` after the reads behind it began.
        self._entries: TLRUCache = TLRUCache(maxsize, ttu=lambda _key, fresh, _now: fresh.as_of + ttl, timer=timer)
        self._loading: dict[K, asyncio.Future[Fresh[V]]] = {}

    def __len__(self) -> int:
        """The answers kept now, expired ones not yet dropped included."""
        return len(self._entries)

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> Fresh[V]:
        """The key's answer: kept, shared with a load in flight, or loaded now by `load`."""
        if self._ttl <= 0:
            return await self._stamped(load)
        try:
            return self._entries[key]
        except KeyError:
            pass
        loading = self._loading.get(key)
        if loading is None:
            # A task of its own, not the first caller's coroutine: a caller that is cancelled (its client
            # gave up) must not cancel the load the others wait for; shield() below keeps it running.
            loading = asyncio.ensure_future(self._stamped(load))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(loading)

    async def _stamped(self, load: Callable[[], Awaitable[V]]) -> Fresh[V]:
        as_of = self._timer()
        return Fresh(await load(), as_of)

    def _settle(self, key: K, done: asyncio.Future[Fresh[V]]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        # Only answers are kept, never errors; an answer already past its life is not stored (TLRUCache skips it).
        if not done.cancelled() and done.exception() is None:
            self._entries[key] = done.result()
