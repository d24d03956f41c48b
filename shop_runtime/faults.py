"""Cut-offs on purpose: rules that make a call between services lose its request or its answer, for tests.

A rule names the caller, the callee and the method, and whether the call is cut off before it
reaches the callee ("before": nothing happened there) or after the callee answered ("after": the
callee did its work and committed, only the answer is lost). With no rule set, which is always the
case outside tests, a call goes through untouched. Rules live in this process only: tests that run
services in their own process set them directly.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")

BEFORE, AFTER, SLOW = "before", "after", "slow"


@dataclass
class Rule:
    """Cut off the next `times` calls of `method` from `caller` to `callee`, `when` before or after the callee."""

    caller: str
    callee: str
    method: str
    when: str
    times: int = 1
    hits: int = 0
    # For SLOW: how long the call waits before it goes out (a slow network, a busy callee).
    seconds: float = 0.0


_RULES: list[Rule] = []
_LOCK = threading.Lock()


def cut(caller: str, callee: str, method: str, when: str, times: int = 1) -> Rule:
    """Adds a rule; returns it, so a test can read how many calls it cut (`hits`)."""
    if when not in (BEFORE, AFTER):
        raise ValueError(f"when must be {BEFORE!r} or {AFTER!r}")
    return _add(Rule(caller, callee, method, when, times))


def slow(caller: str, callee: str, method: str, seconds: float, times: int = 1) -> Rule:
    """Adds a rule that delays the next `times` calls by `seconds`, so a test can cut off what is under way."""
    return _add(Rule(caller, callee, method, SLOW, times, seconds=seconds))


def _add(rule: Rule) -> Rule:
    with _LOCK:
        _RULES.append(rule)
    return rule


def clear() -> None:
    """Removes every rule."""
    with _LOCK:
        _RULES.clear()


def _take(caller: str, callee: str, method: str) -> Rule | None:
    if not _RULES:
        return None
    with _LOCK:
        for rule in _RULES:
            if (rule.caller, rule.callee, rule.method) == (caller, callee, method) and rule.hits < rule.times:
                rule.hits += 1
                return rule
    return None


async def around(caller: str, callee: str, method: str, call: Callable[[], Awaitable[T]],
                 lost: Callable[[str], Exception]) -> T:
    """Runs `call`, unless a rule cuts it off: then `lost(why)` is raised before or after it ran."""
    rule = _take(caller, callee, method)
    if rule is None:
        return await call()
    if rule.when == SLOW:
        await asyncio.sleep(rule.seconds)
        return await call()
    if rule.when == BEFORE:
        raise lost(f"{caller} -> {callee}.{method} cut off before it arrived (fault injection)")
    await call()
    raise lost(f"{caller} -> {callee}.{method} cut off after it was done (fault injection)")
