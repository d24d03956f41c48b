"""Consul: registering this instance with a gRPC check, and watching other services' healthy instances."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

import consul
import consul.aio
from consul.callback import CB
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

_LOGGER = logging.getLogger(__name__)

# How long one blocking query waits for a change before Consul answers anyway.
WATCH_WAIT = "10s"
# How long a watch waits for Consul's answer before asking again: its wait, Consul's jitter (up to a sixteenth of
# it) and a margin.
WATCH_TIMEOUT_SECONDS = 15.0


# The tag of every Consul service instance Prometheus scrapes (monitoring.targets), and the metadata keys that say
# where: the port (`metrics_port`, else the service's own port) and the path (`metrics_path`, else /metrics).
METRICS_TAG = "metrics"
METRICS_PORT_META = "metrics_port"
METRICS_PATH_META = "metrics_path"


def metrics_registration(metrics_port: int | None, path: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The tags and metadata an instance serving its metrics on `metrics_port` (None: it serves none) registers."""
    if metrics_port is None:
        return [], {}
    meta = {METRICS_PORT_META: str(metrics_port)}
    if path:
        meta[METRICS_PATH_META] = path
    return [METRICS_TAG], meta


def connect(host: str, port: int, token: str | None = None) -> consul.aio.Consul:
    """An asyncio Consul client for the agent at host:port, with `token` where Consul's ACLs are on."""
    return consul.aio.Consul(host=host, port=port, token=token or None)


@dataclass(frozen=True, order=True)
class Instance:
    """One healthy instance of a service, as Consul lists it."""

    address: str
    port: int
    service_id: str

    @property
    def target(self) -> str:
        """The gRPC target of the instance."""
        return f"{self.address}:{self.port}"


async def register(
    client: consul.aio.Consul,
    *,
    name: str,
    service_id: str,
    address: str,
    port: int,
    check_interval: str = "2s",
    retry_for: float = 30.0,
    passing: bool = False,
    tls: bool = False,
    metrics_port: int | None = None,
) -> None:
    """Registers the instance with a gRPC health check on its own port, retrying while the agent starts.

    With `metrics_port`, the instance is tagged `metrics` with that port in its metadata: Prometheus scrapes it there
    (monitoring.targets).

    With `passing`, the check starts as passing rather than critical: for a service that registers itself
    while it serves, so an instance whose registration Consul lost and gets back again is not read as down
    (and dropped by every client and Envoy) until the first check has run.

    With `tls`, the instance serves mutual TLS: the agent checks it over TLS with its own certificate of the suite
    (`enable_agent_tls_for_checks`, devstack.stack.consul_process), and without checking the instance's certificate
    against a host name: Consul 1.8 checks it against its own node name, and has no setting for the name to expect.
    A check only reads the health status; callers of the service check its certificate themselves.
    """
    check = consul.Check.grpc(f"{address}:{port}", check_interval, timeout="2s", deregister="1m")
    if tls:
        # The agent's API names (py-consul's snake_case spelling of these is refused by Consul 1.8's decoder).
        check.update(GRPCUseTLS=True, TLSSkipVerify=True)
    if passing:
        check["Status"] = "passing"
    metrics_tags, meta = metrics_registration(metrics_port)
    await _register(client, name=name, service_id=service_id, address=address, port=port, check=check,
                    tags=["grpc", "v1", *metrics_tags], meta=meta, retry_for=retry_for)


async def register_metrics(client: consul.aio.Consul, *, name: str, service_id: str, address: str, port: int,
                           metrics_port: int, check_url: str, metrics_path: str | None = None,
                           check_interval: str = "5s", retry_for: float = 30.0) -> None:
    """Registers an instance that is only scraped (no gRPC of its own: gateway.sync, Envoy, the audit exporter):
    tagged `metrics` with `metrics_port` (and `metrics_path`) in its metadata, checked over HTTP at `check_url`,
    retrying while the agent starts."""
    check = consul.Check.http(check_url, check_interval, timeout="2s", deregister="1m")
    tags, meta = metrics_registration(metrics_port, metrics_path)
    await _register(client, name=name, service_id=service_id, address=address, port=port, check=check, tags=tags,
                    meta=meta, retry_for=retry_for)


async def _register(client: consul.aio.Consul, *, name: str, service_id: str, address: str, port: int,
                    check: dict, tags: list[str], meta: dict[str, str], retry_for: float) -> None:
    """The agent's registration, retried for `retry_for` seconds while the agent starts (0: once)."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(retry_for),
        wait=wait_exponential(multiplier=0.2, max=2),
        retry=retry_if_exception_type(Exception),
        reraise=True,
    ):
        with attempt:
            await client.agent.service.register(name, service_id=service_id, address=address, port=port,
                                                check=check, tags=tags, meta=meta or None)
    _LOGGER.info("registered %s as %s at %s:%s", name, service_id, address, port)


async def deregister(client: consul.aio.Consul, service_id: str) -> None:
    """Removes the instance from Consul; a failure is logged, since the check expires it anyway."""
    try:
        await client.agent.service.deregister(service_id)
        _LOGGER.info("deregistered %s", service_id)
    except Exception:  # the agent may be gone first on shutdown of a whole stack
        _LOGGER.warning("could not deregister %s; its failing check will remove it", service_id, exc_info=True)


async def is_registered(client: consul.aio.Consul, service_id: str) -> bool:
    """Whether the agent still has this instance (an agent restart or a reaped registration loses it)."""
    return service_id in await client.agent.services()


async def health_entries(client: consul.aio.Consul, service: str, index: str | None) -> tuple[str, list[dict]]:
    """Every instance of `service` with its checks, as a blocking query from `index`, answered from the state of the
    server the agent asks (stale), not forwarded to the cluster's leader: a leader cut off from the network would
    hold a forwarded query, and so the caller's view, until the query's wait ran out; a server's own state is
    replicated from the leader within milliseconds, and goes on being served while a new leader is elected.
    (py-consul's health.service takes no consistency mode: this is the same call with `stale`.)"""
    params = [("stale", "1")]
    if index:
        params += [("index", index), ("wait", WATCH_WAIT)]
    return await client.http.get(CB.json(index=True), f"/v1/health/service/{service}", params=params,
                                 headers=client.prepare_headers(None))


async def catalog_services(client: consul.aio.Consul, index: str | None) -> tuple[str, dict[str, list[str]]]:
    """Every service registered in the catalog with its tags, as a blocking query from `index`, stale as
    health_entries is."""
    return await client.catalog.services(index=index, wait=WATCH_WAIT if index else None, consistency="stale")


def _passing(node: dict) -> bool:
    """As Consul's own `passing` filter: every check of the instance and its node passes."""
    return all(check.get("Status") == "passing" for check in node.get("Checks", ()))


def _instances(nodes: list[dict]) -> list[Instance]:
    found = []
    for node in nodes:
        svc = node["Service"]
        address = svc.get("Address") or node["Node"]["Address"]
        found.append(Instance(address=address, port=int(svc["Port"]), service_id=svc["ID"]))
    return sorted(found)


# How long Consul must go on saying that every instance of a service fails before a Discovery believes it, and
# how often it asks again meanwhile. Longer than one failed check keeps an instance failing: a process paused for
# a few seconds (a host too busy to run it) fails the check under way at its timeout (2 s), and passes again only
# at the next check, up to an interval (2 s) after it resumed; at 2 s, a 3 s pause of every inventory process
# emptied the catalog's list for 0.3 s and refused 60 readers of a crowd at once (tests/e2e/test_gateway_crowd.py).
ALL_FAILING_CONFIRM_SECONDS = 6.0
ALL_FAILING_CONFIRM_POLL = 0.25


class Discovery:
    """The passing instances of one service, kept current by Consul blocking queries.

    While Consul is unreachable, and while it answers that the service has no instance registered at
    all (a restarted agent, before the instances have registered again), the last known good list is
    kept, so a Consul restart does not take callers down with it. Instances registered but failing
    their checks are dropped, as they should be; but when every instance of the service fails at once, that is
    believed only once Consul still says so ALL_FAILING_CONFIRM_SECONDS later. Until then the last list is kept:
    a host that rejoins after a partition can have Consul mark the nodes of the others failed for a moment
    (seen: every instance of every service out for 0.2 s), and no replica of a service would be left to call,
    where a call to a replica that really failed costs no more than refusing it.
    """

    def __init__(
        self,
        client: consul.aio.Consul,
        service: str,
        on_change: Callable[[list[Instance]], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ):
        self._client = client
        self.service = service
        self._instances: list[Instance] = []
        self._on_change = on_change
        # Told of every failed query (a count of Consul errors, say); the watch goes on either way.
        self._on_error = on_error
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        # Whether the list is kept from before because Consul has no instance registered.
        self._kept = False
        # Since when Consul has said that every registered instance fails, while the last list is kept.
        self._all_failing_since: float | None = None

    def instances(self) -> list[Instance]:
        """The instances whose checks passed at the last answer from Consul."""
        return list(self._instances)

    def start(self) -> None:
        """Starts watching in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name=f"discovery-{self.service}")

    @property
    def ready(self) -> bool:
        """Whether Consul has answered at least once."""
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        """Waits for the first answer from Consul; False if none came in time."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        """Stops watching."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self) -> None:
        index = None
        backoff = 0.2
        while True:
            try:
                # asyncio.timeout, not wait_for: this Python's wait_for loses a cancellation (stop) that arrives as
                # the query answers, and the watch would go on for ever (seen at every stop of gateway.sync, whose
                # own deregistration wakes every blocking query at once).
                async with asyncio.timeout(WATCH_TIMEOUT_SECONDS):
                    new_index, nodes = await health_entries(self._client, self.service, index)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                _LOGGER.warning("watching %s in Consul failed (%s); keeping %d known instances",
                                self.service, err, len(self._instances))
                if self._on_error is not None:
                    self._on_error(err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                index = None
                continue
            backoff = 0.2
            # An index that goes backwards means Consul's state was reset: start over.
            index = new_index if index is None or int(new_index) >= int(index) else None
            if not nodes and self._instances:
                if not self._kept:
                    _LOGGER.warning("Consul has no instance of %s registered; keeping the %d last known",
                                    self.service, len(self._instances))
                self._kept = True
                self._ready.set()
                continue
            self._kept = False
            found = _instances([n for n in nodes if _passing(n)])
            if not found and self._instances:
                now = time.monotonic()
                if self._all_failing_since is None:
                    self._all_failing_since = now
                    _LOGGER.warning("every instance of %s fails in Consul; believed if still so in %ss",
                                    self.service, ALL_FAILING_CONFIRM_SECONDS)
                if now - self._all_failing_since < ALL_FAILING_CONFIRM_SECONDS:
                    await asyncio.sleep(ALL_FAILING_CONFIRM_POLL)
                    index = None  # ask again now, not when something changes next
                    continue
            self._all_failing_since = None
            if found != self._instances or not self._ready.is_set():
                self._instances = found
                _LOGGER.info("%s: %d passing instance(s)", self.service, len(found))
                if self._on_change is not None:
                    self._on_change(found)
            self._ready.set()
