"""Calls that a fake service loses on purpose, as a caller sees a lost call."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from shop_runtime.errors import unavailable


class Losses:
    """Calls that fail on purpose as a caller sees a lost call: UNAVAILABLE / DEPENDENCY_UNAVAILABLE,
    raised after the callee did its work (the answer was lost) or before (the request was)."""

    def __init__(self, service: str):
        self._service = service
        self._losses: dict[str, list[bool]] = {}

    def lose_next(self, method: str, after: bool = True) -> None:
        """The next call of `method` is lost: after its effect (after=True) or before it (after=False)."""
        self._losses.setdefault(method, []).append(after)

    async def _lossy(self, method: str, work: Callable[[], Awaitable[Any]]) -> Any:
        queue = self._losses.get(method)
        after = queue.pop(0) if queue else None
        if after is False:
            raise unavailable(self._service)
        result = await work()
        if after:
            raise unavailable(self._service)
        return result
