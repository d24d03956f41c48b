"""Keeps Envoy's upstream endpoints equal to the passing instances in Consul: `python -m gateway.sync`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from gateway.clusters import write_eds
from gateway.routes import UPSTREAMS
from shop_runtime import consul as shop_consul
from shop_runtime.config import env_str
from shop_runtime.logs import setup_logging

_LOGGER = logging.getLogger(__name__)


async def sync(consul_addr: str, eds_dir: Path) -> None:
    """Rewrites a cluster's EDS file whenever its passing set in Consul changes, until SIGTERM/SIGINT."""
    host, _, port = consul_addr.removeprefix("http://").rpartition(":")
    client = shop_consul.connect(host, int(port), os.environ.get("CONSUL_HTTP_TOKEN", "").strip())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def writer(cluster: str) -> Callable[[list[shop_consul.Instance]], None]:
        def on_change(found: list[shop_consul.Instance]) -> None:
            write_eds(eds_dir, cluster, [(i.address, i.port) for i in found])
            _LOGGER.info("envoy upstream %s: %s", cluster, ", ".join(i.target for i in found) or "none")
        return on_change

    watchers = [shop_consul.Discovery(client, name, on_change=writer(name)) for name in UPSTREAMS]
    for w in watchers:
        w.start()
    await stop.wait()
    await asyncio.gather(*(w.stop() for w in watchers))
    await client.close()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eds-dir", type=Path, required=True, help="the folder Envoy watches for EDS files")
    args = parser.parse_args()
    setup_logging("gateway-sync")
    asyncio.run(sync(env_str("CONSUL_HTTP_ADDR", "127.0.0.1:8500"), args.eds_dir))


if __name__ == "__main__":
    main()
