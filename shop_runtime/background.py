"""Work a service does besides answering calls: loops that run while it serves, such as sweepers and reconcilers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Coroutine

from shop_runtime.errors import ServiceError

_LOGGER = logging.getLogger(__name__)


def periodic(name: str, work: Callable[[], Awaitable[bool]],
             interval: float) -> Callable[[], Coroutine[Any, Any, None]]:
    """Background work for GrpcApp.background: `work` every `interval` seconds, at once again when it
    says more is waiting; a failed pass is logged and the next one tries again."""

    async def loop() -> None:
        while True:
            try:
                more = await work()
            except ServiceError as err:  # e.g. a service it needs is not found yet: expected, no traceback
                _LOGGER.warning("%s: pass not done (%s: %s); next in %ss", name, err.reason, err.message, interval)
                more = False
            except Exception:  # one failed pass must not end the work for the process's lifetime
                _LOGGER.exception("%s failed", name)
                more = False
            await asyncio.sleep(0 if more else interval)

    loop.__name__ = name
    return loop


def reconciler(service: str, reconcile: Callable[[], Awaitable[int]],
               interval: float) -> Callable[[], Coroutine[Any, Any, None]]:
    """Background work for GrpcApp.background: a reconciler pass every `interval` seconds, its repairs logged."""

    async def work() -> bool:
        if repaired := await reconcile():
            _LOGGER.info("%s reconciler: %d repair(s)", service, repaired)
        return False

    return periodic(f"{service}-reconciler", work, interval)
