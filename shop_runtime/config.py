"""Settings every service reads from its environment, once, at start."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from typing import Mapping, TypeVar

N = TypeVar("N", int, float)
S = TypeVar("S", bound="EnvSettings")
_KIND_NAMES = {int: "an integer", float: "a number"}


class ConfigError(RuntimeError):
    """A required environment variable is missing or malformed."""


def env_str(name: str, default: str | None = None) -> str:
    """Returns the variable's value, or the default; a missing required one is a ConfigError."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(f"environment variable {name} is required but not set")
    return default


def parse_number(label: str, raw: str, kind: type[N], minimum: N | None = None, maximum: N | None = None) -> N:
    """`raw` as an int or a float (`kind`) within [minimum, maximum]; a ConfigError naming `label` (the variable
    or key it came from) when it is not one or out of range."""
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{label}={raw!r} is not {_KIND_NAMES[kind]}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            raise ConfigError(f"{label}={value} is below {minimum}")
        if minimum is None:
            raise ConfigError(f"{label}={value} is above {maximum}")
        raise ConfigError(f"{label}={value} is outside {minimum}..{maximum}")
    return value


def env_number(name: str, default: N, kind: type[N], *, minimum: N | None = None, maximum: N | None = None,
               environ: Mapping[str, str] | None = None) -> N:
    """The environment's one number parser: the variable as `kind` within [minimum, maximum], or the default when
    unset; from `environ` when given (settings handed over as a mapping, e.g. a test's gateway of its own), else
    the process environment."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    return parse_number(f"environment variable {name}", raw, kind, minimum, maximum)


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None,
            environ: Mapping[str, str] | None = None) -> int:
    """The variable as an int within [minimum, maximum], or the default when unset (env_number)."""
    return env_number(name, default, int, minimum=minimum, maximum=maximum, environ=environ)


def env_float(name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None,
              environ: Mapping[str, str] | None = None) -> float:
    """The variable as a float no smaller than minimum (0 unless given), or the default when unset (env_number)."""
    return env_number(name, default, float, minimum=minimum, maximum=maximum, environ=environ)


def setting(var: str, default: N, *, minimum: N | None = None, maximum: N | None = None) -> N:
    """A field of an EnvSettings class: read from `var` as the default's type (int or float), within bounds; a
    float is never below 0 unless `minimum` says otherwise."""
    if minimum is None and isinstance(default, float):
        minimum = type(default)(0)  # a float setting: its floor is 0.0
    return field(default=default, metadata={"var": var, "minimum": minimum, "maximum": maximum})


class EnvSettings:
    """The pattern of a service's own settings: a frozen dataclass whose fields are `setting(...)`s, each naming
    its variable and default once; `from_env()` reads them all."""

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
        """The settings from the environment (or `environ`), each unset one its default."""
        values = {}
        # Every EnvSettings is a dataclass by the pattern's rule (each subclass is declared with @dataclass), which
        # the bound of S cannot say to the type checker.
        for f in fields(cls):  # type: ignore[arg-type]
            if "var" in f.metadata:
                values[f.name] = env_number(f.metadata["var"], f.default, type(f.default),
                                            minimum=f.metadata["minimum"], maximum=f.metadata["maximum"],
                                            environ=environ)
        return cls(**values)


def _advertise_address(value: str) -> str:
    """The address others reach this instance at; `auto` is this host's own address (containers)."""
    if value != "auto":
        return value
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError as err:
        raise ConfigError(f"ADVERTISE_ADDRESS=auto: cannot resolve this host's address ({err})") from None


# Most worker processes one service may run: far above any core count this suite is sized for, low
# enough that a typo (WORKERS=100) fails loudly instead of starting a hundred processes.
MAX_WORKERS = 64

# Postgres connections one service may hold across all its workers, unless DB_POOL_MAX_SIZE sets
# each pool: four services at this budget stay well under the max_connections the local Postgres
# runs with (devstack/postgres.py), leaving room for the order service's side connections. Every
# worker gets at least MIN_POOL_SIZE, so with very many workers (WORKERS=auto on a host of
# some forty cores) the four services pass that; set DB_CONNECTIONS or DB_POOL_MAX_SIZE there.
DB_CONNECTIONS = 20

# The smallest pool a worker gets from the budget: one connection for requests beside the one
# the readiness check and the background passes may hold.
MIN_POOL_SIZE = 2


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0))


def parse_workers(raw: str, name: str = "WORKERS") -> int:
    """A worker count: a positive integer, or `auto` for one per usable core; empty is 1."""
    raw = raw.strip().lower()
    if not raw:
        return 1
    if raw == "auto":
        return max(1, min(usable_cores(), MAX_WORKERS))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is neither a positive integer nor 'auto'") from None
    if not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"environment variable {name}={value} is outside 1..{MAX_WORKERS}")
    return value


def pool_size_for(budget: int, workers: int) -> int:
    """Each worker's pool size: the service's connection budget shared by its workers."""
    return max(MIN_POOL_SIZE, budget // workers)


# METRICS_PORT's value that turns a process's metrics off (neither served nor registered).
METRICS_OFF = "off"


def metrics_port_from_env(name: str = "METRICS_PORT", environ: Mapping[str, str] | None = None) -> int | None:
    """Where a process serves its metrics: the port in `name`, 0 (any free port) when unset, None when `off`."""
    raw = (os.environ if environ is None else environ).get(name, "").strip().lower()
    if raw == METRICS_OFF:
        return None
    return env_int(name, 0, minimum=0, maximum=65535, environ=environ)


@dataclass(frozen=True)
class ServiceSettings:
    """How one service process is wired: its database, its port, where Consul is."""

    service_name: str
    database_url: str
    grpc_host: str
    grpc_port: int
    advertise_address: str
    consul_host: str
    consul_port: int
    shutdown_grace_seconds: float
    check_interval: str
    pool_max_size: int
    # Where /metrics is served (Prometheus) and registered in Consul (tag `metrics`, metadata `metrics_port`): a port,
    # 0 for any free one (the default: every instance of every replica its own), None for not at all (`off`).
    metrics_port: int | None = 0
    # Worker processes of this service (WORKERS); 1: this process serves, more: it supervises them.
    workers: int = 1
    # Which worker this process is (1..workers) when a supervisor started it; 0 when it runs alone.
    worker_index: int = 0
    # How long a stopping instance, already out of Consul and NOT_SERVING, still takes new calls: those of callers
    # (Envoy, the other services) that chose it before they heard it was leaving.
    shutdown_delay_seconds: float = 1.0
    # The folder of the suite's CA and this service's certificate and key (shop_runtime.mtls); '': plaintext gRPC.
    tls_dir: str = ""
    # How long Postgres lets one of this service's transactions wait for its next statement before ending it and
    # its locks (shop_runtime.db.open_pool); 0: as long as the connection lives.
    idle_in_transaction_seconds: float = 0.0
    # This service's Consul ACL token (CONSUL_HTTP_TOKEN, as Consul's own tools take it); '': Consul without ACLs.
    consul_token: str = field(default="", repr=False)

    @property
    def process_name(self) -> str:
        """The name its log lines carry: the service, and the worker's number when it is one of several."""
        return f"{self.service_name}.{self.worker_index}" if self.worker_index else self.service_name

    @property
    def instance_id(self) -> str:
        """The Consul service id: unique per process, stable for its lifetime."""
        return f"{self.service_name}-{socket.gethostname()}-{os.getpid()}"

    @classmethod
    def from_env(cls, service_name: str, default_port: int) -> "ServiceSettings":
        """Reads the settings of `service_name`; `<NAME>_DATABASE_URL` wins over `DATABASE_URL`."""
        prefix = service_name.upper().replace("-", "_")
        dsn_var = f"{prefix}_DATABASE_URL" if os.environ.get(f"{prefix}_DATABASE_URL") else "DATABASE_URL"
        consul = env_str("CONSUL_HTTP_ADDR", "127.0.0.1:8500").removeprefix("http://")
        workers = parse_workers(os.environ.get("WORKERS", ""))
        if os.environ.get("DB_POOL_MAX_SIZE", "").strip():
            pool_max_size = env_int("DB_POOL_MAX_SIZE", 10, minimum=1, maximum=200)
        else:
            pool_max_size = pool_size_for(env_int("DB_CONNECTIONS", DB_CONNECTIONS, minimum=1, maximum=10_000), workers)
        host, _, port = consul.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"environment variable CONSUL_HTTP_ADDR={consul!r} is not host:port")
        return cls(
            service_name=service_name,
            database_url=env_str(dsn_var),
            grpc_host=env_str("GRPC_HOST", "127.0.0.1"),
            grpc_port=env_int("GRPC_PORT", default_port, minimum=0, maximum=65535),
            advertise_address=_advertise_address(env_str("ADVERTISE_ADDRESS", "127.0.0.1")),
            consul_host=host,
            consul_port=int(port),
            shutdown_grace_seconds=env_float("SHUTDOWN_GRACE_SECONDS", 5.0),
            shutdown_delay_seconds=env_float("SHUTDOWN_DELAY_SECONDS", 1.0),
            check_interval=env_str("CONSUL_CHECK_INTERVAL", "2s"),
            pool_max_size=pool_max_size,
            metrics_port=metrics_port_from_env(),
            workers=workers,
            # Set by the supervisor for the processes it starts (shop_runtime.supervision), not by hand.
            worker_index=env_int("WORKER_INDEX", 0, minimum=0, maximum=MAX_WORKERS),
            tls_dir=os.environ.get("TLS_DIR", "").strip(),
            consul_token=os.environ.get("CONSUL_HTTP_TOKEN", "").strip(),
        )
