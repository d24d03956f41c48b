"""The whole suite for the e2e tier: demo data, every service, Envoy and its Consul sync, on free ports."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest

from devstack.prepare import prepare
from gateway.identity import issue_token
from devstack.stack import SERVICE_MODULES, Ports, free_port, gateway_processes, service_process, suite_ready
from devstack.procs import Proc, on_free_ports, wait_up
from devstack.postgres import create_database, dsn_for
from shop_runtime import mtls
from shop_runtime.mtls import Tls


@dataclass(frozen=True)
class Suite:
    """A running suite: where its gateway is, and its database."""

    ports: Ports
    dsn: str
    secrets: Path
    # The suite's CA and certificates: its services take only gRPC callers with one of them.
    tls_dir: Path
    # Its processes by name (a service's supervisor, whose workers run as its descendants in sessions of their
    # own), for tests that pause one.
    processes: dict[str, Proc] = dataclasses.field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    def token(self, user: str, role: str | None = None, **kw) -> str:
        """A token from the suite's issuer."""
        return issue_token(self.secrets, user, role, **kw)

    def auth(self, user: str, role: str | None = None) -> dict[str, str]:
        """The Authorization header of a valid token."""
        return {"Authorization": f"Bearer {self.token(user, role)}"}

    def channel(self, service: str, identity: str = "ops") -> grpc.aio.Channel:
        """An asyncio gRPC channel to `service`'s configured port, with `identity`'s certificate of the suite."""
        return mtls.channel(f"127.0.0.1:{self.ports.services[service]}", service, Tls.load(self.tls_dir, identity))

    def sync_channel(self, service: str, identity: str = "ops") -> grpc.Channel:
        """The same, blocking."""
        return grpc.secure_channel(f"127.0.0.1:{self.ports.services[service]}",
                                   Tls.load(self.tls_dir, identity).channel_credentials(),
                                   options=[("grpc.ssl_target_name_override", mtls.server_name(service))])


# Worker processes per service, as `make run` has them on a 2-core machine. The catalog keeps one:
# test_gateway_upstreams starts from Envoy knowing exactly the catalog's configured port.
E2E_WORKERS = {"catalog": 1, "cart": 2, "inventory": 2, "order": 2}
# The e2e tests read `available` right after changing stock: a catalog that keeps answers for a second
# (CATALOG_CACHE_SECONDS, 1 by default) would show them the figure from before; they run it uncached.
E2E_ENV = {"catalog": {"CATALOG_CACHE_SECONDS": "0"}}


# The gateway's limits of the session's suite. schemathesis sends hundreds of state changes as one user, as
# fast as the suite answers; at the default per-user limit some of them (more, the faster the suite) would get
# 429 and test nothing behind the gateway. The limits themselves are tested in test_rate_limits.py, on gateways
# of their own.
E2E_GATEWAY_SETTINGS = {"GATEWAY_RATE_LIMIT_PER_SECOND": "1000", "GATEWAY_RATE_LIMIT_BURST": "1000"}


def listening_ports(consul_ports: Ports) -> Ports:
    """The session's Consul ports with the others (the services', the gateway's) picked afresh."""
    return dataclasses.replace(consul_ports, gateway=free_port(), envoy_admin=free_port(),
                               services={s: free_port() for s in SERVICE_MODULES})


@pytest.fixture(scope="session")
def suite(pg_admin_dsn, consul, ports, log_dir, tmp_path_factory, tls_dir):
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    secrets = tmp_path_factory.mktemp("secrets")
    asyncio.run(prepare(dsn))
    procs: list[Proc] = []

    def start(picked: Ports) -> None:
        specs = [*(service_process(s, picked, dsn, workers=E2E_WORKERS[s], tls_dir=tls_dir, **E2E_ENV.get(s, {}))
                   for s in SERVICE_MODULES),
                 *gateway_processes(picked, tmp_path_factory.mktemp("gateway"), secrets, E2E_GATEWAY_SETTINGS,
                                    tls_dir)]
        procs[:] = [Proc(spec, log_dir) for spec in specs]
        try:
            wait_up(procs, lambda: suite_ready(picked, instances=E2E_WORKERS), 60, "the suite")
        except BaseException:
            for p in procs:
                p.stop()
            raise

    # The first try on the session's ports; when one is taken before its process binds it, others.
    tries = iter([ports])
    try:
        picked, _ = on_free_ports(start, lambda: next(tries, None) or listening_ports(ports), "the suite")
        yield Suite(ports=picked, dsn=dsn, secrets=secrets, tls_dir=tls_dir, processes={p.name: p for p in procs})
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="session")
def http(suite):
    """An HTTP client on the gateway."""
    with httpx.Client(base_url=suite.base_url, timeout=15) as client:
        yield client


@pytest.fixture
def audit_clean(suite):
    """Checks the inventory audit of the suite's database."""
    from inventory_svc.audit import audit

    async def run() -> list[str]:
        async with await psycopg.AsyncConnection.connect(suite.dsn) as conn:
            return await audit(conn)

    def check() -> list[str]:
        # Its own thread and loop: callable from sync and async tests alike.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run()).result()

    return check


@pytest.fixture
def kv(suite):
    """Sets Consul KV keys for one test and removes them after it."""
    written: list[str] = []

    def put(key: str, value: str) -> None:
        request = urllib.request.Request(f"http://{suite.ports.consul_addr}/v1/kv/{key}", data=value.encode(),
                                         method="PUT")
        urllib.request.urlopen(request, timeout=5).read()
        written.append(key)

    yield put
    for key in written:
        request = urllib.request.Request(f"http://{suite.ports.consul_addr}/v1/kv/{key}", method="DELETE")
        urllib.request.urlopen(request, timeout=5).read()
