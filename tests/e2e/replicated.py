"""A whole suite with several replicas of every service under supervisord behind Envoy, for the e2e tests that need
replicas (faults, the opening instant of a campaign)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import httpx

from devstack import supervise
from devstack.patroni import Cluster, local_cluster, start_data_tier
from devstack.postgres import create_database, dsn_for
from devstack.prepare import prepare
from devstack.prometheus import BOARD_DIR, monitoring_processes, prometheus_ready
from devstack.procs import Supervised, consul_ready, on_free_ports, wait_up
from devstack.stack import SERVICE_MODULES, Ports, suite_processes, suite_ready


def put_kv(ports: Ports, key: str, value: str) -> None:
    """Sets a store setting in the suite's Consul KV."""
    resp = httpx.put(f"http://{ports.consul_addr}/v1/kv/{key}", content=value, timeout=10)
    assert resp.status_code == 200 and resp.json() is True, resp.text


def start_replicated(services_dsn: str, run_dir: Path, secrets: Path, tls_dir: Path, *, replicas: int,
                     env: Mapping[str, str], kv: Mapping[str, str] = {}, ports: Ports | None = None,
                     consul: bool = True, prometheus: bool = False) -> tuple[Ports, Popen]:
    """Starts Consul (unless `consul` is False: one already runs on `ports`, beside a Patroni cluster), `replicas`
    replicas of every service (one worker each) and the gateway under one supervisord, on ports picked free (picked
    again when one was taken before its program bound it), with `env` in every program's environment and `kv` in
    Consul before the services start; returns once every service has its replicas passing. With `prometheus`,
    Prometheus on `ports.prometheus` and its target sync from Consul too (devstack.prometheus.monitoring_processes,
    data and target files under `run_dir`/prometheus, the sale board's files at /user/ when assembled, the periodic
    suite audit), ready before
    this returns. The caller stops it with devstack.supervise.stop."""

    def start(ports: Ports) -> Popen:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # supervisord's programs take its environment
        try:
            specs = suite_processes(ports, services_dsn, run_dir, secrets, workers=1,
                                    replicas=dict.fromkeys(SERVICE_MODULES, replicas), tls_dir=tls_dir,
                                    consul=consul)
            if prometheus:
                specs += monitoring_processes(ports, run_dir / "prometheus", assets_dir=BOARD_DIR, dsn=services_dsn)
            supervised = Supervised(specs, run_dir / "supervisor", run_dir / "supervisord.log")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            wait_up([supervised], lambda: consul_ready(ports.consul_addr), 30, "consul under supervisord")
            for key, value in kv.items():
                put_kv(ports, key, value)
            wait_up([supervised], lambda: suite_ready(ports, instances=dict.fromkeys(SERVICE_MODULES, replicas)),
                    120, "the suite under supervisord")
            if prometheus:
                wait_up([supervised], lambda: prometheus_ready(ports), 60, "prometheus under supervisord")
        except BaseException:
            supervise.stop(supervised.popen)
            raise
        return supervised.popen

    if ports is not None:
        return ports, start(ports)
    return on_free_ports(start, Ports.free, "the suite under supervisord")


@dataclass
class OnCluster:
    """A replicated suite on a Patroni cluster: the cluster, its DSN, and the two supervisords (the data tier's:
    Consul and the members; the suite's: the services and the gateway)."""

    ports: Ports
    cluster: Cluster
    dsn: str
    data_tier: Popen
    supervisor: Popen
    home: Path  # the members' homes (outside pytest's temporary root: Postgres runs as a user of its own)
    run_dir: Path  # the supervisords' folders (the data tier's: supervisor-db) and logs
    secrets: Path  # the token issuer's keys

    @property
    def base(self) -> str:
        """The gateway's URL (what tests.e2e.sale needs of a suite)."""
        return f"http://127.0.0.1:{self.ports.gateway}"

    def stop(self) -> None:
        supervise.stop(self.supervisor)
        supervise.stop(self.data_tier)
        shutil.rmtree(self.home, ignore_errors=True)


@contextmanager
def monitored_suite(pg_admin_dsn: str, run_dir: Path, tls_dir: Path, *, replicas: int,
                    env: Mapping[str, str]) -> Iterator[tuple[Ports, str]]:
    """A suite on a database of its own (demo catalog), `replicas` replicas of every service behind Envoy, with
    Prometheus, its target sync from Consul and the periodic audit (start_replicated with `prometheus`); yields its
    ports and its database's DSN, and stops it all."""
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    asyncio.run(prepare(dsn))
    ports, supervisor = start_replicated(dsn, run_dir, run_dir / "secrets", tls_dir, replicas=replicas, env=env,
                                         prometheus=True)
    try:
        yield ports, dsn
    finally:
        supervise.stop(supervisor)


def start_on_cluster(run_dir: Path, secrets: Path, tls_dir: Path, *, members: int = 3, replicas: int,
                     env: Mapping[str, str], kv: Mapping[str, str] = {},
                     dcs: Mapping[str, object] | None = None, prometheus: bool = False) -> OnCluster:
    """Starts Consul and a Patroni cluster of `members` members (devstack.patroni) under one supervisord, prepares
    the `shop` database on it (migrations, demo data), then `replicas` replicas of every service and the gateway on
    the cluster's DSN (start_replicated; with `prometheus`, Prometheus and its target sync too). The caller stops it
    with OnCluster.stop."""
    ports = Ports.free()
    home = Path(tempfile.mkdtemp(prefix="shop-test-patroni-"))
    cluster = local_cluster(home, members, ports.consul_addr, dcs=dict(dcs or {}))
    log = (run_dir / "data-tier.log").open("ab")
    dsn, data_tier = start_data_tier(cluster, ports, run_dir, tls_dir, stdout=log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(prepare(dsn))
        _, supervisor = start_replicated(dsn, run_dir, secrets, tls_dir, replicas=replicas, env=env, kv=kv,
                                         ports=ports, consul=False, prometheus=prometheus)
    except BaseException:
        supervise.stop(data_tier)
        shutil.rmtree(home, ignore_errors=True)
        raise
    return OnCluster(ports, cluster, dsn, data_tier, supervisor, home, run_dir, secrets)


# The settings of the fault tests' services: reconcilers that repair within seconds, Consul checks every second, a
# short drain, no catalog cache (so what a test reads is the database's).
FAULT_ENV = {"RECONCILE_INTERVAL_SECONDS": "2", "RECONCILE_MIN_AGE_SECONDS": "5", "CONSUL_CHECK_INTERVAL": "1s",
             "SHUTDOWN_GRACE_SECONDS": "10", "CATALOG_CACHE_SECONDS": "0"}


@contextmanager
def cluster_suite(run_dir: Path, tls_dir: Path, *, replicas: int, env: Mapping[str, str] = FAULT_ENV,
                  kv: Mapping[str, str] = {}) -> Iterator[OnCluster]:
    """A replicated suite on a three-member Patroni cluster (start_on_cluster) for one test module, stopped after."""
    suite = start_on_cluster(run_dir, run_dir / "secrets", tls_dir, replicas=replicas, env=env, kv=kv)
    try:
        yield suite
    finally:
        suite.stop()
