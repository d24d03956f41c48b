"""gRPC load from one or more client processes (grpc.aio), all calls of one kind, for a fixed time."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf import message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime import mtls

# The kinds of call a run can make.
NOOP = "noop"    # Health.Check: answered from memory
HOLDS = "holds"  # InventoryService.CreateHolds of 1 unit of one SKU, each with its own idempotency key

# How long one call may take before it counts as DEADLINE_EXCEEDED.
CALL_TIMEOUT_SECONDS = 30.0


@dataclass
class GrpcRun:
    """What one run measured, over all client processes."""

    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    # gRPC status code name -> calls that ended with it.
    codes: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        """Calls answered per second."""
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Load:
    """One run's shape: where, what, how many callers in how many processes, for how long."""

    targets: tuple[str, ...]
    kind: str
    callers: int
    seconds: float
    warmup_seconds: float
    processes: int = 1
    # Connections each process opens to each target; several spread the calls over workers sharing a port.
    connections: int = 4
    sku: str = ""
    # The suite's certificates (devstack.certs): the load calls as `ops` over mutual TLS; '': plaintext.
    tls_dir: str = ""


def _stubs(load: Load) -> tuple[list[grpc.aio.Channel], list]:
    channels, stubs = [], []
    for target in load.targets:
        for n in range(load.connections):
            # A local subchannel pool and a distinct argument: one TCP connection per channel, not one shared.
            channel = mtls.channel(target, "inventory", mtls.Tls.load(load.tls_dir, "ops") if load.tls_dir else None,
                                   options=[("grpc.use_local_subchannel_pool", 1), ("bench.connection", n)])
            channels.append(channel)
            if load.kind == HOLDS:
                stubs.append(inventory_pb2_grpc.InventoryServiceStub(channel).CreateHolds)
            else:
                # types-grpcio-health-checking's HealthStub leaves out the stub's per-RPC attributes.
                stubs.append(health_pb2_grpc.HealthStub(channel).Check)  # type: ignore[attr-defined]
    return channels, stubs


def _request(load: Load, caller: int) -> message.Message:
    if load.kind == HOLDS:
        return inventory_pb2.CreateHoldsRequest(
            owner=f"bench:{caller}", lines=[inventory_pb2.HoldLine(sku=load.sku, qty=1)], ttl_seconds=3600,
            idempotency_key=uuid.uuid4().hex)
    return health_pb2.HealthCheckRequest()


async def _drive(load: Load, callers: int, seconds: float, stubs: list) -> GrpcRun:
    run = GrpcRun()
    deadline = time.monotonic() + seconds

    async def caller(n: int) -> None:
        call = stubs[n % len(stubs)]
        while time.monotonic() < deadline:
            request = _request(load, n)
            start = time.perf_counter()
            try:
                await call(request, timeout=CALL_TIMEOUT_SECONDS)
                code = grpc.StatusCode.OK.name
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            run.latencies_ms.append((time.perf_counter() - start) * 1000)
            run.codes[code] += 1

    start = time.monotonic()
    await asyncio.gather(*(caller(n) for n in range(callers)))
    run.seconds = time.monotonic() - start
    return run


class _Barrier(Protocol):
    """What _client waits on before measuring: the processes' barrier, or one that never waits."""

    def wait(self, timeout: float, /) -> object: ...


async def _client(load: Load, callers: int, barrier: _Barrier) -> GrpcRun:
    channels, stubs = _stubs(load)
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        await _drive(load, callers, load.warmup_seconds, stubs)
        # Every process starts measuring at the same moment; the wait blocks this loop, which has nothing to run.
        barrier.wait(60)
        return await _drive(load, callers, load.seconds, stubs)
    finally:
        for channel in channels:
            await channel.close()


def _process_main(load: Load, callers: int, barrier: multiprocessing.synchronize.Barrier,
                  results: multiprocessing.queues.Queue[GrpcRun | RuntimeError]) -> None:
    try:
        results.put(asyncio.run(_client(load, callers, barrier)))
    except BaseException as err:  # the parent must hear of it rather than wait for a result forever
        barrier.abort()
        results.put(RuntimeError(f"gRPC load process failed: {err!r}"))


def run(load: Load) -> GrpcRun:
    """Runs `load`, its callers split over `load.processes` processes started for it; merges their figures."""
    if load.processes <= 1:
        class _NoBarrier:
            def wait(self, _timeout: float) -> None:
                pass
        return asyncio.run(_client(load, load.callers, _NoBarrier()))
    # spawn: a fresh interpreter per client, with no copy of this process's threads or event loop.
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(load.processes), ctx.Queue()
    shares = [load.callers // load.processes + (1 if i < load.callers % load.processes else 0)
              for i in range(load.processes)]
    procs = [ctx.Process(target=_process_main, args=(load, share, barrier, results), daemon=True)
             for share in shares]
    for p in procs:
        p.start()
    merged = GrpcRun()
    try:
        for _ in procs:
            part = results.get(timeout=load.warmup_seconds + load.seconds + CALL_TIMEOUT_SECONDS + 120)
            if isinstance(part, BaseException):
                raise part
            merged.latencies_ms.extend(part.latencies_ms)
            merged.codes.update(part.codes)
            merged.seconds = max(merged.seconds, part.seconds)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return merged
