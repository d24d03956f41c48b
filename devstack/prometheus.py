"""Prometheus for the local suite (`make run`, the tests): its configuration and its process.

Targets are found through Consul, never listed by hand. Debian's Prometheus is built without Consul service
discovery (no `consul_sd_configs`: the packaging drops the Consul client), so the suite's own target sync
(`python -m monitoring.targets`, run beside Prometheus) watches Consul with blocking queries and writes Prometheus's
file_sd target files, which Prometheus re-reads as soon as they change: every Consul service instance tagged `metrics`
is scraped at its address and the port in its `metrics_port` metadata (else its service port), on the path in its
`metrics_path` metadata (else /metrics). A replica that registers is scraped from the next write; one that leaves
Consul is dropped, and one that dies without leaving is marked down (`up == 0`) by its next failed scrape. The job
label is the Consul service name (`catalog`, `cart`, `inventory`, `order`, `envoy`, `gateway-sync`, `postgres-api`,
...); `instance` is the Consul service id, so a replica reads as itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from devstack.stack import ROOT, Ports, ProcessSpec, _env, audit_exporter_process, fetched_binary, http_get

# The rules (recording and alerting) every Prometheus of the suite loads, and their promtool unit tests.
RULES_DIR = ROOT / "monitoring" / "rules"
# The sale board's files (monitoring/board/ and the charting library from npm), assembled by `make board` and served
# by Prometheus at /user/ (--web.user-assets).
BOARD_DIR = ROOT / ".tools" / "board"
# The files of Prometheus's own web pages (/classic/...), from Debian's packages (`make prometheus`): Debian's binary
# looks for them under /usr/share/prometheus/web unless told otherwise.
WEB_ASSETS = ROOT / ".tools" / "prometheus" / "usr" / "share" / "prometheus" / "web"
# How often targets are scraped and rules evaluated in a local run; how often Consul is asked for targets.
SCRAPE_INTERVAL = "5s"
REFRESH_INTERVAL = "5s"


def prometheus_binary() -> str:
    """PROMETHEUS_BIN, else a prometheus on PATH, else the one `make prometheus` fetched into .tools/."""
    return fetched_binary("prometheus", "PROMETHEUS_BIN", "prometheus")


def promtool_binary() -> str:
    """PROMTOOL_BIN, else a promtool on PATH, else the one `make prometheus` fetched into .tools/."""
    return fetched_binary("promtool", "PROMTOOL_BIN", "prometheus")


def file_targets(targets_dir: Path) -> dict:
    """The scrape job of every target the target sync found in Consul (the module's docstring)."""
    return {
        "job_name": "consul-services",
        "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": REFRESH_INTERVAL}],
    }


def config(targets_dir: Path, prometheus_addr: str, rules_dir: Path = RULES_DIR,
           scrape_interval: str = SCRAPE_INTERVAL) -> dict:
    """Prometheus's configuration: the target sync's files in `targets_dir`, the rules of `rules_dir`, and
    Prometheus itself at `prometheus_addr`."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "rule_files": [str(rules_dir / "*.yml")],
        "scrape_configs": [
            file_targets(targets_dir),
            {"job_name": "prometheus", "static_configs": [{"targets": [prometheus_addr]}]},
        ],
    }


def write_config(run_dir: Path, ports: Ports, rules_dir: Path = RULES_DIR) -> Path:
    """Writes prometheus.yml (JSON, which is YAML) into `run_dir`, its target files to come in `run_dir`/targets;
    returns its path."""
    (run_dir / "targets").mkdir(parents=True, exist_ok=True)
    path = run_dir / "prometheus.yml"
    path.write_text(json.dumps(config(run_dir / "targets", f"127.0.0.1:{ports.prometheus}", rules_dir), indent=2))
    return path


def prometheus_process(ports: Ports, run_dir: Path, rules_dir: Path = RULES_DIR,
                       assets_dir: Path | None = None, retention: str = "2d") -> ProcessSpec:
    """Prometheus on 127.0.0.1:`ports.prometheus`, its data under `run_dir`/data; with `assets_dir`, those files
    served at /user/ (the sale board, devstack's board assets)."""
    conf = write_config(run_dir, ports, rules_dir)
    argv = [
        prometheus_binary(), f"--config.file={conf}", f"--storage.tsdb.path={run_dir / 'data'}",
        f"--storage.tsdb.retention.time={retention}", f"--web.listen-address=127.0.0.1:{ports.prometheus}",
        "--web.enable-lifecycle", "--log.level=warn",
    ]
    if assets_dir is not None:
        argv.append(f"--web.user-assets={assets_dir}")
    if WEB_ASSETS.is_dir():
        argv.append(f"--web.local-assets={WEB_ASSETS}/")
    return ProcessSpec("prometheus", argv, _env())


def targets_process(ports: Ports, run_dir: Path, token: str = "") -> ProcessSpec:
    """The target sync (monitoring.targets): Consul's instances tagged `metrics` written into `run_dir`/targets,
    where prometheus_process's configuration reads them."""
    env = _env(CONSUL_HTTP_ADDR=ports.consul_addr, **({"CONSUL_HTTP_TOKEN": token} if token else {}))
    return ProcessSpec("prometheus-targets",
                       [sys.executable, "-m", "monitoring.targets", "--out", str(run_dir / "targets")], env)


def monitoring_processes(ports: Ports, run_dir: Path, assets_dir: Path | None = None,
                         dsn: str | None = None) -> list[ProcessSpec]:
    """Prometheus and its target sync, both on `run_dir` (prometheus_process, targets_process); the sale board's
    files served too when `assets_dir` is given and exists; with `dsn`, the suite audit of that database run
    periodically, its findings a metric (devstack.stack.audit_exporter_process, which registers in Consul)."""
    assets = assets_dir if assets_dir is not None and assets_dir.is_dir() else None
    return [prometheus_process(ports, run_dir, assets_dir=assets), targets_process(ports, run_dir),
            *([audit_exporter_process(ports, dsn)] if dsn else [])]


def prometheus_ready(ports: Ports) -> bool:
    """Whether Prometheus answers that it is ready."""
    try:
        return http_get(f"http://127.0.0.1:{ports.prometheus}/-/ready")[0] == 200
    except OSError:
        return False
