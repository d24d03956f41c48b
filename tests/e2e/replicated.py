"""A whole suite with several replicas of every service under supervisord behind Envoy, for the e2e tests that need
replicas (faults, the opening instant of a campaign)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from subprocess import Popen

import httpx

from devstack import supervise
from devstack.procs import Supervised, consul_ready, on_free_ports, wait_up
from devstack.stack import SERVICE_MODULES, Ports, suite_processes, suite_ready


def put_kv(ports: Ports, key: str, value: str) -> None:
    """Sets a store setting in the suite's Consul KV."""
    resp = httpx.put(f"http://{ports.consul_addr}/v1/kv/{key}", content=value, timeout=10)
    assert resp.status_code == 200 and resp.json() is True, resp.text


def start_replicated(services_dsn: str, run_dir: Path, secrets: Path, tls_dir: Path, *, replicas: int,
                     env: Mapping[str, str], kv: Mapping[str, str] = {}) -> tuple[Ports, Popen]:
    """Starts Consul, `replicas` replicas of every service (one worker each) and the gateway under one
    supervisord, on ports picked free (picked again when one was taken before its program bound it), with `env`
    in every program's environment and `kv` in Consul before the services start; returns once every service has
    its replicas passing. The caller stops it with devstack.supervise.stop."""

    def start(ports: Ports) -> Popen:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # supervisord's programs take its environment
        try:
            specs = suite_processes(ports, services_dsn, run_dir, secrets, workers=1,
                                    replicas=dict.fromkeys(SERVICE_MODULES, replicas), tls_dir=tls_dir)
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
        except BaseException:
            supervise.stop(supervised.popen)
            raise
        return supervised.popen

    return on_free_ports(start, Ports.free, "the suite under supervisord")
