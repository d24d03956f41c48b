"""Clients of other services: one channel per healthy instance, calls spread round-robin, idempotent calls retried."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Callable, Generic, TypeVar

import grpc
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from shop_runtime import deadlines, faults, mtls
from shop_runtime.consul import Discovery, Instance
from shop_runtime.calls import outgoing, relay
from shop_runtime.errors import unavailable

_LOGGER = logging.getLogger(__name__)

StubT = TypeVar("StubT")

# Failures after which the same request may be sent again: the instance, not the request, failed,
# or the answer was lost. The callee may have done the work: only idempotent calls are repeated.
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# How long a call waits for the first list of its callee's instances from Consul.
DISCOVERY_WAIT = 2.0


def _transient(err: BaseException) -> bool:
    if not isinstance(err, grpc.aio.AioRpcError) or err.code() not in TRANSIENT:
        return False
    left = deadlines.remaining()
    return left is None or left > deadlines.MIN_ATTEMPT


def _lost(why: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=why)


class ServiceClient(Generic[StubT]):
    """Hands out stubs of one service, each bound to the next of its passing instances."""

    def __init__(self, discovery: Discovery, stub_factory: Callable[[grpc.aio.Channel], StubT], caller: str = "",
                 tls: mtls.Tls | None = None):
        self._discovery = discovery
        # The caller's certificate, for mutual TLS with the callee; None: plaintext.
        self._tls = tls
        self._caller = caller
        self._stub_factory = stub_factory
        self._channels: dict[str, tuple[grpc.aio.Channel, StubT]] = {}
        # Channels of instances gone from Consul, closing once their calls are answered.
        self._closing: set[asyncio.Task] = set()
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

    async def call(self, method: str, request: Any, *, user: str | None = None, idempotent: bool = False,
                   timeout: float = deadlines.ATTEMPT_TIMEOUT, attempts: int = deadlines.ATTEMPTS,
                   trailers: bool = False) -> Any:
        """Calls `method` on the next passing instance on behalf of `user`.

        The callee's refusal is raised as this service's own ServiceError, a dead or silent callee as
        UNAVAILABLE. An idempotent call (a read, or a write carrying its idempotency key) that failed
        in transit is sent again, the same request to the next instance, with backoff, a few times
        and within the current handler's deadline. With `trailers`, the answer comes with the call's
        trailing metadata, as (response, {name: value}). Typed clients (e.g. inventory_svc.client) wrap
        this; services do not call it with method names themselves.
        """
        if not self._discovery.ready:
            # A process that has just started is asked before Consul's first answer about the services it calls.
            left = deadlines.remaining()
            await self._discovery.wait_ready(DISCOVERY_WAIT if left is None else min(left, DISCOVERY_WAIT))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts if idempotent else 1),
            wait=wait_exponential_jitter(multiplier=0.05, max=0.5, jitter=0.05),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(method, request, user, deadlines.attempt_timeout(timeout), trailers)
        except grpc.aio.AioRpcError as err:
            raise relay(err, self.service) from err
        raise AssertionError("unreachable: tenacity either returned or raised")

    async def _once(self, method: str, request: Any, user: str | None, timeout: float, trailers: bool) -> Any:
        if timeout <= deadlines.MIN_ATTEMPT:
            raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details="no time left for this call")
        stub = self.stub()

        async def invoke() -> Any:
            call = getattr(stub, method)(request, timeout=timeout, metadata=outgoing(self._caller, user))
            response = await call
            return (response, dict(await call.trailing_metadata() or ())) if trailers else response

        return await faults.around(self._caller, self.service, method, invoke, _lost)

    def _entry(self, instance: Instance) -> tuple[grpc.aio.Channel, StubT]:
        entry = self._channels.get(instance.target)
        if entry is None:
            channel = mtls.channel(instance.target, self.service, self._tls)
            entry = (channel, self._stub_factory(channel))
            self._channels[instance.target] = entry
        return entry

    def prune(self, instances: list[Instance]) -> None:
        """Stops using the channels of instances that are no longer passing, and closes each once the calls
        under way on it are answered (at most an attempt's time): an instance leaving gracefully answers them
        while it drains; closing at once would cancel them on this side."""
        keep = {i.target for i in instances}
        for target in [t for t in self._channels if t not in keep]:
            channel, _ = self._channels.pop(target)
            task = asyncio.get_running_loop().create_task(channel.close(grace=deadlines.ATTEMPT_TIMEOUT))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Closes every channel."""
        channels = [c for c, _ in self._channels.values()]
        self._channels.clear()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
