"""Keeps Envoy's upstream endpoints equal to the passing instances in Consul: `python -m gateway.sync`; registers
itself and Envoy in Consul for Prometheus."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from gateway.clusters import write_eds
from gateway.routes import UPSTREAMS
from shop_runtime import consul as shop_consul
from shop_runtime import metrics
from shop_runtime.config import ConfigError, _advertise_address, env_str, metrics_port_from_env
from shop_runtime.logs import setup_logging

_LOGGER = logging.getLogger(__name__)

# What the sync has written: Prometheus scrapes them from the sync's own metrics port.
UPSTREAM_INSTANCES = Gauge("shop_gateway_sync_upstream_instances",
                           "Instances of an upstream in Envoy's endpoints as last written", ["upstream"])
EDS_WRITES = Counter("shop_gateway_sync_writes", "Envoy endpoint files written, by upstream", ["upstream"])
CONSUL_ERRORS = Counter("shop_gateway_sync_consul_errors", "Consul queries or registrations of the sync that failed")

# Consul service names of the sync and of the Envoy it feeds, and where Envoy's admin serves its metrics.
SYNC_SERVICE = "gateway-sync"
ENVOY_SERVICE = "envoy"
ENVOY_METRICS_PATH = "/stats/prometheus"
# How often the sync looks that Consul still has them (an agent restart loses them).
REGISTRATION_CHECK_INTERVAL = 5.0


@dataclass(frozen=True)
class Registration:
    """One Consul registration the sync makes, checked over HTTP."""

    name: str
    service_id: str
    address: str
    port: int
    check_url: str
    metrics_port: int
    metrics_path: str | None = None

    async def register(self, client: Any, retry_for: float = 30.0) -> None:
        """Registers it (tag `metrics`), retrying while the agent starts."""
        await shop_consul.register_metrics(client, name=self.name, service_id=self.service_id, address=self.address,
                                           port=self.port, metrics_port=self.metrics_port, check_url=self.check_url,
                                           metrics_path=self.metrics_path, retry_for=retry_for)


def registrations(address: str, metrics_port: int, envoy_admin_port: int | None, gateway_port: int | None,
                  envoy_address: str | None = None) -> list[Registration]:
    """The sync itself (its metrics port, at `address`) and, when its admin port is known, Envoy at `envoy_address`
    (else `address`: Envoy on the sync's host), scraped on the admin's /stats/prometheus, checked on its /ready."""
    host = socket.gethostname()
    found = [Registration(SYNC_SERVICE, f"{SYNC_SERVICE}-{host}-{os.getpid()}", address, metrics_port,
                          f"http://{address}:{metrics_port}/metrics", metrics_port)]
    if envoy_admin_port:
        found.append(Registration(
            ENVOY_SERVICE, f"{ENVOY_SERVICE}-{envoy_address or host}-{envoy_admin_port}", envoy_address or address,
            gateway_port or envoy_admin_port, f"http://{envoy_address or address}:{envoy_admin_port}/ready",
            envoy_admin_port, ENVOY_METRICS_PATH))
    return found


async def keep_registered(client: Any, regs: list[Registration]) -> None:
    """Registers them (retrying while the agent starts), then again whenever Consul has lost them; the sync's own
    work goes on meanwhile, and a refusal (a token without the right) is logged, not fatal."""
    for reg in regs:
        try:
            await reg.register(client)
        except Exception as err:  # the next look tries again
            CONSUL_ERRORS.inc()
            _LOGGER.warning("could not register %s (%s)", reg.service_id, err)
    while True:
        await asyncio.sleep(REGISTRATION_CHECK_INTERVAL)
        try:
            known = await client.agent.services()
            for reg in regs:
                if reg.service_id not in known:
                    await reg.register(client, retry_for=0)
                    _LOGGER.warning("Consul had lost %s: registered again", reg.service_id)
        except Exception as err:  # Consul away: the next look tries again
            CONSUL_ERRORS.inc()
            _LOGGER.warning("cannot check the registrations in Consul (%s)", err)


async def sync(consul_addr: str, eds_dir: Path, *, envoy_admin_port: int | None = None,
               gateway_port: int | None = None, envoy_address: str | None = None, metrics_port: int | None = 0,
               advertise: str = "127.0.0.1", metrics_host: str = "127.0.0.1") -> None:
    """Rewrites a cluster's EDS file whenever its passing set in Consul changes, until SIGTERM/SIGINT; serves its
    metrics (unless `metrics_port` is None) and registers itself and Envoy in Consul meanwhile."""
    host, _, port = consul_addr.removeprefix("http://").rpartition(":")
    client = shop_consul.connect(host, int(port), os.environ.get("CONSUL_HTTP_TOKEN", "").strip())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def writer(cluster: str) -> Callable[[list[shop_consul.Instance]], None]:
        def on_change(found: list[shop_consul.Instance]) -> None:
            write_eds(eds_dir, cluster, [(i.address, i.port) for i in found])
            UPSTREAM_INSTANCES.labels(cluster).set(len(found))
            EDS_WRITES.labels(cluster).inc()
            _LOGGER.info("envoy upstream %s: %s", cluster, ", ".join(i.target for i in found) or "none")
        return on_change

    watchers = [shop_consul.Discovery(client, name, on_change=writer(name), on_error=lambda _: CONSUL_ERRORS.inc())
                for name in UPSTREAMS]
    for w in watchers:
        w.start()
    regs: list[Registration] = []
    tasks: list[asyncio.Task] = []
    served = metrics.serve(metrics_port, metrics_host)
    try:
        if served is not None:
            regs = registrations(advertise, served, envoy_admin_port, gateway_port, envoy_address)
            tasks.append(asyncio.create_task(keep_registered(client, regs), name="registrations"))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in watchers))
        for reg in regs:
            await shop_consul.deregister(client, reg.service_id)
        await client.close()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eds-dir", type=Path, required=True, help="the folder Envoy watches for EDS files")
    parser.add_argument("--envoy-admin-port", type=int, help="Envoy's admin port: Envoy is registered in Consul for"
                        " Prometheus (its /stats/prometheus), checked on its /ready")
    parser.add_argument("--gateway-port", type=int, help="Envoy's REST port, the port of its Consul registration")
    parser.add_argument("--envoy-address", help="where Envoy's admin is reached (default: ADVERTISE_ADDRESS, Envoy"
                        " beside the sync)")
    args = parser.parse_args()
    setup_logging("gateway-sync")
    try:
        # METRICS_PORT as the services read it: a port, any free one when unset, `off` for none.
        metrics_port = metrics_port_from_env()
        advertise = _advertise_address(env_str("ADVERTISE_ADDRESS", "127.0.0.1"))
    except ConfigError as err:
        parser.error(str(err))
    asyncio.run(sync(env_str("CONSUL_HTTP_ADDR", "127.0.0.1:8500"), args.eds_dir,
                     envoy_admin_port=args.envoy_admin_port, gateway_port=args.gateway_port,
                     envoy_address=args.envoy_address,
                     metrics_port=metrics_port, advertise=advertise,
                     metrics_host=env_str("METRICS_HOST", "127.0.0.1")))


if __name__ == "__main__":
    main()
