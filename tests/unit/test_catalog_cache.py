"""The catalog's answer cache: life from the load's start, shared loads under real asyncio concurrency, errors
never kept, a bounded size; with a fake loader and a fake clock."""

import asyncio

import pytest

from catalog_svc.cache import AnswerCache


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Counts its loads; each answers (key, load number); a load can be held open until released, or fail."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next = 0
        self.clock = clock
        self.takes = 0.0  # seconds of the fake clock one load lasts

    def __call__(self, key: str):
        async def load():
            self.calls.append(key)
            await self.release.wait()
            if self.clock is not None:
                self.clock.now += self.takes
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError(f"load of {key} failed")
            return (key, len(self.calls))

        return load


async def settle() -> None:
    """Lets every ready task run until it waits."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_answer_is_kept_for_the_ttl_then_loaded_again():
    clock = Clock()
    cache = AnswerCache(1.0, 10, clock)
    load = Loader()
    assert (await cache.get("a", load("a"))).value == ("a", 1)
    clock.now += 0.999
    assert (await cache.get("a", load("a"))).value == ("a", 1)
    assert load.calls == ["a"]
    clock.now += 0.001
    assert (await cache.get("a", load("a"))).value == ("a", 2)
    assert load.calls == ["a", "a"]


async def test_the_life_counts_from_when_the_load_began_not_when_it_ended():
    clock = Clock()
    cache = AnswerCache(1.0, 10, clock)
    load = Loader(clock)
    load.takes = 0.6
    first = await cache.get("a", load("a"))
    assert first.as_of == 100.0 and clock.now == pytest.approx(100.6)
    clock.now = 100.99
    assert (await cache.get("a", load("a"))).value == ("a", 1)
    clock.now = 101.0  # one second after the first load began, 0.4 s after it ended
    assert (await cache.get("a", load("a"))).value == ("a", 2)


async def test_a_load_that_outlasts_the_ttl_is_answered_but_not_kept():
    clock = Clock()
    cache = AnswerCache(1.0, 10, clock)
    load = Loader(clock)
    load.takes = 1.5
    assert (await cache.get("a", load("a"))).value == ("a", 1)
    assert len(cache) == 0
    assert (await cache.get("a", load("a"))).value == ("a", 2)


async def test_concurrent_misses_of_one_key_share_one_load():
    cache = AnswerCache(1.0, 10, Clock())
    load = Loader()
    load.release.clear()
    readers = [asyncio.create_task(cache.get("hot", load("hot"))) for _ in range(200)]
    await settle()
    assert load.calls == ["hot"]  # every reader is waiting, one load runs
    assert not any(r.done() for r in readers)
    load.release.set()
    answers = await asyncio.gather(*readers)
    assert {a.value for a in answers} == {("hot", 1)}
    assert load.calls == ["hot"]


async def test_misses_of_different_keys_load_at_the_same_time():
    cache = AnswerCache(1.0, 10, Clock())
    load = Loader()
    load.release.clear()
    readers = [asyncio.create_task(cache.get(k, load(k))) for k in ("a", "b", "a", "b")]
    await settle()
    assert sorted(load.calls) == ["a", "b"]  # both in flight at once, neither waits for the other
    load.release.set()
    # Each answers after both loads began (the answer names how many loads had begun by then).
    assert [r.value for r in await asyncio.gather(*readers)] == [("a", 2), ("b", 2), ("a", 2), ("b", 2)]


async def test_a_failed_load_fails_its_waiters_and_is_not_kept():
    clock = Clock()
    cache = AnswerCache(1.0, 10, clock)
    load = Loader()
    load.release.clear()
    load.fail_next = 1
    readers = [asyncio.create_task(cache.get("a", load("a"))) for _ in range(20)]
    await settle()
    load.release.set()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert load.calls == ["a"]
    # Not kept: the very next call, at the same instant, loads again.
    assert (await cache.get("a", load("a"))).value == ("a", 2)
    assert load.calls == ["a", "a"]


async def test_a_reader_that_gives_up_does_not_cancel_the_load_others_wait_for():
    cache = AnswerCache(1.0, 10, Clock())
    load = Loader()
    load.release.clear()
    first = asyncio.create_task(cache.get("a", load("a")))
    second = asyncio.create_task(cache.get("a", load("a")))
    await settle()
    first.cancel()
    await settle()
    load.release.set()
    assert (await second).value == ("a", 1)
    assert first.cancelled()
    assert (await cache.get("a", load("a"))).value == ("a", 1)  # and the answer was kept
    assert load.calls == ["a"]


async def test_the_size_is_bounded_and_the_least_recently_used_answer_goes_first():
    cache = AnswerCache(60.0, 3, Clock())
    load = Loader()
    for key in ("a", "b", "c"):
        await cache.get(key, load(key))
    await cache.get("a", load("a"))  # a is now the most recently used
    await cache.get("d", load("d"))  # evicts b, the least recently used
    assert len(cache) == 3
    assert load.calls == ["a", "b", "c", "d"]
    await cache.get("a", load("a"))
    await cache.get("c", load("c"))
    assert load.calls == ["a", "b", "c", "d"]
    await cache.get("b", load("b"))
    assert load.calls == ["a", "b", "c", "d", "b"]
    assert len(cache) == 3


async def test_a_ttl_of_zero_turns_the_cache_off():
    cache = AnswerCache(0.0, 10, Clock())
    load = Loader()
    load.release.clear()
    readers = [asyncio.create_task(cache.get("a", load("a"))) for _ in range(3)]
    await settle()
    assert load.calls == ["a", "a", "a"]  # no sharing either: every read is its own
    load.release.set()
    await asyncio.gather(*readers)
    await cache.get("a", load("a"))
    assert len(load.calls) == 4 and len(cache) == 0
