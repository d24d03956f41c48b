"""A service process's life: migrate, open the pool, serve gRPC with health, register in Consul, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence

import grpc
import psycopg
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from shop_runtime import consul as shop_consul
from shop_runtime import metrics
from shop_runtime.callers import refusal
from shop_runtime.clients import ServiceClient
from shop_runtime.clock import Clock, SystemClock
from shop_runtime.config import ConfigError, ServiceSettings, env_float
from shop_runtime.db import migrate, open_pool
from shop_runtime.interceptor import CallInterceptor
from shop_runtime.live_settings import LiveSettings
from shop_runtime.logs import setup_logging
from shop_runtime.mtls import Tls
from shop_runtime.registration import READINESS_INTERVAL, Readiness, keep_registered
from shop_runtime.supervision import Supervisor, stop_with, supervise

_LOGGER = logging.getLogger(__name__)

# How long a starting process waits for Consul's first answer about the services it calls before serving anyway.
DISCOVERY_WAIT = 10.0

# Metadata a call may carry: above what the gateway lets through (32 KiB), so a request the gateway
# accepted is never refused here for its headers (gRPC's default is 8 KiB).
MAX_METADATA_BYTES = 64 * 1024

# Calls that have arrived but that the application has not taken up yet, before gRPC itself refuses some:
# its default (1,000, then random refusals up to 3,000) answered CANCELLED to part of a crowd of 2,000
# that the gateway had let through (gateway.limits: GATEWAY_MAX_REQUESTS_PER_SERVICE, 10,000 by default,
# decides how many requests wait; they wait here, in arrival order, within the route's timeout).
MAX_PENDING_CALLS = 20_000

# gRPC's own default lets a second process bind a port already taken (SO_REUSEPORT) and quietly take a share of its
# connections: an instance left over from an earlier run would then answer for this one. A taken port is an error.
SERVER_OPTIONS = (("grpc.max_metadata_size", MAX_METADATA_BYTES),
                  ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                  ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
                  ("grpc.so_reuseport", 0))

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Deps:
    """What a service's server is built from: its pool and its view of the other services."""

    pool: AsyncConnectionPool
    consul: Any = None
    clock: Clock = field(default_factory=SystemClock)
    # Store settings from Consul KV; without Consul (tests of one service), their defaults.
    live: LiveSettings = field(default_factory=lambda: LiveSettings(client=None))
    # This service's certificate, for mutual TLS with the services it calls; None: plaintext.
    tls: Tls | None = None
    _discoveries: list[shop_consul.Discovery] = field(default_factory=list)
    _clients: list[ServiceClient] = field(default_factory=list)

    def client(self, service: str, stub_factory: Callable[[grpc.aio.Channel], Any], caller: str = "") -> ServiceClient:
        """A client of `service` that follows its passing instances in Consul."""
        if self.consul is None:
            raise RuntimeError(f"no Consul client to discover {service}")
        holder: list[ServiceClient] = []
        discovery = shop_consul.Discovery(self.consul, service, on_change=lambda found: holder[0].prune(found))
        client = ServiceClient(discovery, stub_factory, caller, self.tls)
        holder.append(client)
        discovery.start()
        self._discoveries.append(discovery)
        self._clients.append(client)
        return client

    async def discovered(self, timeout: float) -> bool:
        """Waits for Consul's first answer about every service this one calls; False if one did not come in time."""
        found = await asyncio.gather(*(d.wait_ready(timeout) for d in self._discoveries))
        return all(found)

    async def close(self) -> None:
        """Stops discovery and closes channels; the pool and Consul client belong to the caller."""
        await asyncio.gather(*(d.stop() for d in self._discoveries), self.live.stop())
        await asyncio.gather(*(c.close() for c in self._clients))


class ListenError(RuntimeError):
    """The server cannot listen on its address: the port is taken, or the address is not this host's."""


@dataclass
class GrpcApp:
    """A built, not yet started, gRPC server, its health service and its background work."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]
    # Handlers keep working when their caller goes away; stopping waits for them (see CallInterceptor).
    interceptor: CallInterceptor = field(default_factory=CallInterceptor)
    # Coroutine functions run while the server serves (e.g. sweepers), cancelled when it stops.
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)

    async def set_serving(self, serving: bool) -> None:
        """Sets the overall and every per-service health status."""
        status = SERVING if serving else NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)


def build_server(
    settings: ServiceSettings,
    servicers: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any]],
    service_names: Sequence[str],
) -> GrpcApp:
    """A server with the given servicers, the standard health service and reflection, bound to its port."""
    interceptor = CallInterceptor(settings.service_name, refusal=refusal)
    server = grpc.aio.server(interceptors=[interceptor], options=SERVER_OPTIONS)
    for add, servicer in servicers:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    credentials = None
    if settings.tls_dir:
        credentials = Tls.load(settings.tls_dir, settings.service_name).server_credentials()
    else:
        _LOGGER.warning("TLS_DIR is not set: gRPC in plaintext, any caller that reaches %s is served", address)
    port = _listen(server, address, credentials)
    return GrpcApp(server=server, port=port, health=health_servicer, service_names=list(service_names),
                   interceptor=interceptor)


def _listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Binds `server` to `address` (over TLS with `credentials`); returns the port. A ListenError names the address
    when it cannot be bound."""
    try:
        port = (server.add_insecure_port(address) if credentials is None
                else server.add_secure_port(address, credentials))
    except RuntimeError:  # this grpcio's "Failed to bind to address"; older releases returned 0 instead
        port = 0
    if not port:
        raise ListenError(f"cannot listen on {address}: its port is taken by another process, or its host is not"
                          " an address of this host")
    return port


async def _retry_database(what: Callable[[], Any], retry_for: float = 30.0) -> Any:
    """Runs `what`, retrying while the database is still starting."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(retry_for),
        wait=wait_exponential(multiplier=0.2, max=2),
        retry=retry_if_exception_type((psycopg.OperationalError, TimeoutError)),
        reraise=True,
    ):
        with attempt:
            return await what()


async def serve(
    settings: ServiceSettings,
    *,
    schema: str,
    migrations: Path,
    create_server: Callable[[ServiceSettings, Deps], GrpcApp],
    stop: asyncio.Event | None = None,
) -> None:
    """Runs one service until SIGTERM/SIGINT (or `stop`), then leaves Consul and drains in-flight calls; a worker
    also stops when its supervisor ends."""
    # Held from the start: a supervisor that ends while this worker starts is seen when it begins to serve.
    supervisor = Supervisor.of_this_worker() if settings.worker_index else None
    await _retry_database(lambda: migrate(settings.database_url, schema, migrations))
    pool = await _retry_database(lambda: open_pool(settings.database_url, max_size=settings.pool_max_size,
                                                   idle_in_transaction_seconds=settings.idle_in_transaction_seconds))
    client = shop_consul.connect(settings.consul_host, settings.consul_port, settings.consul_token)
    tls = Tls.load(settings.tls_dir, settings.service_name) if settings.tls_dir else None
    deps = Deps(pool=pool, consul=client, live=LiveSettings(client), tls=tls)
    deps.live.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        app = create_server(settings, deps)
    except BaseException:
        # Nothing serves yet (e.g. its port is taken): what was opened for it is closed before the error goes on.
        if supervisor is not None:
            supervisor.close()
        await deps.close()
        await pool.close()
        await client.close()
        raise
    metrics.watch_pool(pool.get_stats)
    try:
        metrics_port = metrics.serve(settings.metrics_port, settings.grpc_host)
    except BaseException:
        # Its metrics port is taken: nothing serves yet, so what was opened is closed as for a port taken above.
        if supervisor is not None:
            supervisor.close()
        await deps.close()
        await pool.close()
        await client.close()
        raise
    tasks: list[asyncio.Task] = []
    registered = False
    try:
        # NOT_SERVING until it knows where the services it calls are: a gateway checking this port (a replica
        # started again where one stopped) must not send calls it would refuse for want of a list.
        await app.set_serving(False)
        await app.server.start()
        if not await deps.discovered(DISCOVERY_WAIT):
            _LOGGER.warning("Consul has not answered where the services it calls are; serving, and asking on")
        # Connections idle in the pool through an outage may be broken; they are checked (and replaced) first.
        readiness = Readiness(settings.database_url, recovered=pool.check)
        tasks.append(asyncio.create_task(readiness.watch(app), name="readiness"))
        tasks += [asyncio.create_task(work(), name=work.__name__) for work in app.background]
        if supervisor is not None:
            tasks.append(asyncio.create_task(stop_with(supervisor, stop), name="supervisor"))
        _LOGGER.info("%s serving gRPC on %s:%s", settings.service_name, settings.grpc_host, app.port)
        # Registered once the health service says what the database's first probe found: a check registered as
        # passing while the port still answers NOT_SERVING would send callers an instance that refuses them.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(readiness.answered.wait(), 2 * READINESS_INTERVAL)
        await shop_consul.register(
            client,
            name=settings.service_name,
            service_id=settings.instance_id,
            address=settings.advertise_address,
            port=app.port,
            check_interval=settings.check_interval,
            passing=readiness.serving is True,
            tls=bool(settings.tls_dir),
            metrics_port=metrics_port,
        )
        registered = True
        tasks.append(asyncio.create_task(keep_registered(client, settings, app.port, readiness, metrics_port),
                                         name="registration"))
        await stop.wait()
        _LOGGER.info("stopping: NOT_SERVING, leaving Consul, draining for %ss (after taking calls %ss more)",
                     settings.shutdown_grace_seconds, settings.shutdown_delay_seconds)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await app.health.enter_graceful_shutdown()
        if registered:
            await shop_consul.deregister(client, settings.instance_id)
            if stop.is_set():
                # Out of Consul and NOT_SERVING, but still taking calls for a moment: a caller that chose this
                # instance before its list changed is served, not refused.
                await asyncio.sleep(settings.shutdown_delay_seconds)
        await app.server.stop(settings.shutdown_grace_seconds)
        await app.interceptor.drain(settings.shutdown_grace_seconds)
        await deps.close()
        await pool.close()
        await client.close()
        if supervisor is not None:
            supervisor.close()
        _LOGGER.info("%s stopped", settings.service_name)


@dataclass(frozen=True)
class ServiceSpec:
    """What the runtime needs to know of a service to run it."""

    name: str
    default_port: int
    schema: str
    migrations: Path
    create_server: Callable[[ServiceSettings, Deps], GrpcApp]
    # How long one of its transactions may wait for its next statement before Postgres ends it and its locks
    # (DB_IDLE_IN_TRANSACTION_SECONDS overrides it); 0: no bound. Only for a service none of whose transactions
    # spans a call to another service, which may take longer than any such bound.
    idle_in_transaction_seconds: float = 0.0

    def settings(self) -> ServiceSettings:
        """This service's settings, read from the environment."""
        return dataclasses.replace(
            ServiceSettings.from_env(self.name, self.default_port),
            idle_in_transaction_seconds=env_float("DB_IDLE_IN_TRANSACTION_SECONDS", self.idle_in_transaction_seconds))

    async def serve(self, settings: ServiceSettings, stop: asyncio.Event | None = None) -> None:
        """Runs the service with `settings` until stopped."""
        await serve(settings, schema=self.schema, migrations=self.migrations,
                    create_server=self.create_server, stop=stop)


def main(spec: ServiceSpec) -> None:
    """The `python -m <service>` entry point: settings from the environment, then serve; with WORKERS
    above 1, that many worker processes of the same command instead, each a full instance."""
    try:
        settings = spec.settings()
    except ConfigError as err:
        print(f"{spec.name}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.process_name)
    if settings.workers > 1:
        raise SystemExit(supervise(settings))
    # uvloop's event loop: every database round trip and gRPC call of a service goes through the loop's
    # reader registration and callbacks, which the standard loop does in Python (a fifth more adds a second
    # per cart worker measured with make bench).
    try:
        uvloop.run(spec.serve(settings))
    except ListenError as err:
        _LOGGER.error("%s", err)
        raise SystemExit(1) from None
