"""Clients of other services: one channel per healthy instance, calls spread round-robin."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Callable, Generic, TypeVar

import grpc

from shop_runtime.consul import Discovery, Instance
from shop_runtime.calls import outgoing, relay
from shop_runtime.errors import unavailable

_LOGGER = logging.getLogger(__name__)

StubT = TypeVar("StubT")

# How long a call to another service may take before it counts as failed.
CALL_TIMEOUT = 5.0
# Failures that mean the instance, not the request, is the problem.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ServiceClient(Generic[StubT]):
    """Hands out stubs of one service, each bound to the next of its passing instances."""

    def __init__(self, discovery: Discovery, stub_factory: Callable[[grpc.aio.Channel], StubT], caller: str = ""):
        self._discovery = discovery
        self._caller = caller
        self._stub_factory = stub_factory
        self._channels: dict[str, tuple[grpc.aio.Channel, StubT]] = {}
        self._turn = itertools.count()

    @property
    def service(self) -> str:
        """The name of the service called."""
        return self._discovery.service

    def stub(self) -> StubT:
        """A stub on the next passing instance; UNAVAILABLE (a ServiceError) when there is none."""
        instances = self._discovery.instances()
        if not instances:
            raise unavailable(self.service)
        instance = instances[next(self._turn) % len(instances)]
        return self._entry(instance)[1]

    async def call(self, method: str, request: Any, *, user: str | None = None, timeout: float = CALL_TIMEOUT,
                   attempts: int = 1) -> Any:
        """Calls `method` on the next passing instance on behalf of `user`; the callee's refusal is
        raised as this service's own ServiceError, a dead callee as UNAVAILABLE. With attempts > 1, a
        dead or silent instance is followed by the next one (for reads and idempotent calls only)."""
        for attempt in range(1, attempts + 1):
            try:
                return await getattr(self.stub(), method)(request, timeout=timeout,
                                                          metadata=outgoing(self._caller, user))
            except grpc.aio.AioRpcError as err:
                if attempt == attempts or err.code() not in _RETRYABLE:
                    raise relay(err, self.service) from err
        raise AssertionError("attempts must be 1 or more")

    def _entry(self, instance: Instance) -> tuple[grpc.aio.Channel, StubT]:
        entry = self._channels.get(instance.target)
        if entry is None:
            channel = grpc.aio.insecure_channel(instance.target)
            entry = (channel, self._stub_factory(channel))
            self._channels[instance.target] = entry
        return entry

    def prune(self, instances: list[Instance]) -> None:
        """Closes the channels of instances that are no longer passing."""
        keep = {i.target for i in instances}
        for target in [t for t in self._channels if t not in keep]:
            channel, _ = self._channels.pop(target)
            asyncio.get_running_loop().create_task(channel.close())

    async def close(self) -> None:
        """Closes every channel."""
        channels = [c for c, _ in self._channels.values()]
        self._channels.clear()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
