"""Prometheus's targets from Consul, written as file_sd files: `python -m monitoring.targets --out DIR`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from shop_runtime import consul as shop_consul
from shop_runtime.config import env_str
from shop_runtime.logs import setup_logging

_LOGGER = logging.getLogger(__name__)

# Where an instance's metrics are when its metadata does not say.
DEFAULT_METRICS_PATH = "/metrics"
# How long a watch waits after Consul failed to answer before it asks again, at first and at most.
RETRY_FIRST, RETRY_MAX = 0.2, 5.0


def _host_port(address: str, port: int | str) -> str:
    """host:port, an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def target_groups(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consul's entries of one service (/v1/health/service/<name>: every instance, passing or not) -> Prometheus
    file_sd target groups, one per instance tagged `metrics`: scraped at the instance's address (else its node's) and
    the port in its `metrics_port` metadata (else its own port), on the path in `metrics_path` (else /metrics);
    labelled job = the service's name, instance = its Consul service id, node = its Consul node. An instance failing
    its checks stays a target: Prometheus's own scrape says it is down (`up == 0`) until Consul drops it."""
    groups = []
    for entry in entries:
        svc, node = entry["Service"], entry.get("Node") or {}
        if shop_consul.METRICS_TAG not in (svc.get("Tags") or ()):
            continue
        meta = svc.get("Meta") or {}
        address = svc.get("Address") or node.get("Address", "")
        port = meta.get(shop_consul.METRICS_PORT_META) or svc["Port"]
        groups.append({
            "targets": [_host_port(address, port)],
            "labels": {
                "job": svc["Service"],
                "instance": svc["ID"],
                "node": node.get("Node", ""),
                "__metrics_path__": meta.get(shop_consul.METRICS_PATH_META) or DEFAULT_METRICS_PATH,
            },
        })
    return sorted(groups, key=lambda g: g["labels"]["instance"])


def scraped_services(services: dict[str, list[str]]) -> set[str]:
    """The names of the services (Consul's catalog: name -> the tags of all its instances) Prometheus scrapes."""
    return {name for name, tags in services.items() if shop_consul.METRICS_TAG in (tags or ())}


def file_name(service: str) -> str:
    """The file_sd file of `service` (only characters safe in a file name)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", service) + ".json"


def write_atomically(path: Path, groups: list[dict[str, Any]]) -> None:
    """Writes `groups` to `path` as Prometheus reads it: whole or not at all (a temporary file renamed over it, which
    the `*.json` pattern of the configuration does not match)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(groups, out, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TargetSync:
    """Keeps one file_sd file per scraped service in `out_dir` equal to its instances in Consul: a blocking query on
    the catalog finds the services tagged `metrics` (new ones without a restart), one on each such service its
    instances. While Consul does not answer, the files stay as they were."""

    def __init__(self, client: Any, out_dir: Path):
        self._client = client
        self.out_dir = out_dir
        self._watches: dict[str, asyncio.Task] = {}
        self._written: dict[str, list[dict[str, Any]]] = {}

    def write(self, service: str, groups: list[dict[str, Any]]) -> None:
        """Writes `service`'s file if it changed."""
        if self._written.get(service) == groups:
            return
        write_atomically(self.out_dir / file_name(service), groups)
        self._written[service] = groups
        _LOGGER.info("targets of %s: %s", service, ", ".join(g["labels"]["instance"] for g in groups) or "none")

    def remove(self, service: str) -> None:
        """Drops `service`'s file: it left Consul, or lost its `metrics` tag."""
        (self.out_dir / file_name(service)).unlink(missing_ok=True)
        self._written.pop(service, None)
        _LOGGER.info("targets of %s: gone from Consul", service)

    async def run(self) -> None:
        """Watches until cancelled."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self._watch_catalog()
        finally:
            for task in self._watches.values():
                task.cancel()
            await asyncio.gather(*self._watches.values(), return_exceptions=True)

    async def _blocking(self, what: str, query: Callable[[str | None], Awaitable[tuple[str, Any]]]
                        ) -> AsyncIterator[Any]:
        """Runs blocking queries (`query(index)` -> (index, answer)) for ever, yielding each answer; retried with a
        growing pause while Consul does not answer."""
        index: str | None = None
        pause = RETRY_FIRST
        while True:
            try:
                new_index, answer = await asyncio.wait_for(query(index), shop_consul.WATCH_TIMEOUT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Consul away or refusing: the files stay, asked again
                _LOGGER.warning("watching %s in Consul failed (%s); targets kept as they were", what, err)
                await asyncio.sleep(pause)
                pause, index = min(pause * 2, RETRY_MAX), None
                continue
            pause = RETRY_FIRST
            # An index that goes backwards means Consul's state was reset: start over.
            index = new_index if index is None or int(new_index) >= int(index) else None
            yield answer

    async def _watch_catalog(self) -> None:
        first = True
        async for services in self._blocking("the catalog",
                                             lambda index: shop_consul.catalog_services(self._client, index)):
            wanted = scraped_services(services)
            if first:
                # Files of an earlier run for services no longer there.
                for stale in self.out_dir.glob("*.json"):
                    if stale.name not in {file_name(s) for s in wanted}:
                        stale.unlink(missing_ok=True)
                first = False
            for service in sorted(wanted - self._watches.keys()):
                self._watches[service] = asyncio.create_task(self._watch_service(service), name=f"targets-{service}")
            for service in sorted(self._watches.keys() - wanted):
                task = self._watches.pop(service)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                self.remove(service)

    async def _watch_service(self, service: str) -> None:
        async for entries in self._blocking(service,
                                            lambda index: shop_consul.health_entries(self._client, service, index)):
            self.write(service, target_groups(entries))


async def sync(consul_addr: str, token: str, out_dir: Path) -> None:
    """Runs the sync until SIGTERM/SIGINT."""
    host, _, port = consul_addr.removeprefix("http://").rpartition(":")
    client = shop_consul.connect(host, int(port), token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    task = asyncio.create_task(TargetSync(client, out_dir).run(), name="targets")
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopping):
            t.cancel()
        await asyncio.gather(task, stopping, return_exceptions=True)
        await client.close()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the folder of Prometheus's file_sd target files")
    args = parser.parse_args()
    setup_logging("targets")
    asyncio.run(sync(env_str("CONSUL_HTTP_ADDR", "127.0.0.1:8500"), os.environ.get("CONSUL_HTTP_TOKEN", "").strip(),
                     args.out))


if __name__ == "__main__":
    main()
