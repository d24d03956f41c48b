"""The suite over several hosts for real: test hosts in network namespaces (devstack.hosts), each with its own
address, talking over a bridge as separate machines would.

| host | runs |
| --- | --- |
| db1, db2, db3 | a Consul client agent, and a member of the Patroni cluster (devstack.patroni: Postgres 18 of the embedded package on :5432, Patroni's REST API on :8008) keeping its state in Consul through that agent |
| h1, h2 | a Consul server each, and a replica of every service, registered with the host's own agent |
| h3 | a Consul server: three servers, so the cluster keeps a leader when one is lost |
| gw | a Consul client agent, Envoy on :9000 and gateway.sync |

The services reach the primary through the cluster's multi-host DSN (libpq tries the members in turn and keeps the
one that takes writes). Every gRPC call crosses hosts over mutual TLS, as in `make run`. `python -m devstack.multihost` (`make hosts`) runs
it in the foreground until Ctrl-C; `make hosts-down` removes what a run that was killed left behind. The tests
(tests/e2e/test_hosts.py) start it themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devstack.certs import ensure_certs
from devstack.hosts import Network, remove_leftovers
from devstack.patroni import Cluster, Member, ensure_shop_database
from devstack.prepare import prepare
from devstack.procs import Proc, wait_until
from devstack.stack import (CONSUL_DIR, SERVICE_MODULES, ProcessSpec, Ports, consul_binary, consul_tls_config,
                            gateway_processes, http_get, service_process)
from gateway.identity import issue_token

_LOGGER = logging.getLogger(__name__)

DB_HOSTS = ("db1", "db2", "db3")
HOSTS = [*DB_HOSTS, "h1", "h2", "h3", "gw"]
APP_HOSTS = ("h1", "h2")
CONSUL_SERVERS = ("h1", "h2", "h3")
# The hosts with a Consul client agent of their own (the others run a server).
CONSUL_CLIENTS = (*DB_HOSTS, "gw")
PG_PORT = 5432
PATRONI_API_PORT = 8008
# Each service listens on its usual port on every host (Ports' defaults).
SERVICE_PORTS = Ports().services


def _get(url: str) -> Any:
    """The JSON a GET answers; OSError when there is no answer, ValueError when it is not a 200."""
    status, body = http_get(url)
    if status != 200:
        raise ValueError(f"{url}: {status}")
    return json.loads(body or b"null")


@dataclass
class Topology:
    """The hosts and every process on them; `start()` brings it all up, `stop()` removes it all."""

    work: Path
    log_dir: Path
    tag: str = "m"
    subnet: str = "10.213.7.0/24"
    products: int = 2400
    # Settings every service of every host gets (e.g. shorter reconciler passes in tests).
    service_env: dict[str, str] = field(default_factory=dict)
    net: Network | None = None
    # The Patroni cluster of the db hosts, which start() makes; its members' homes lie outside `work` (pytest's
    # temporary root is closed to the user Postgres runs as).
    data: Cluster | None = None
    pg_home: Path | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    specs: dict[str, ProcessSpec] = field(default_factory=dict)

    # --- where things are -------------------------------------------------------------------------------

    @property
    def network(self) -> Network:
        """The hosts, which start() makes."""
        if self.net is None:
            raise RuntimeError("the topology has no hosts before start()")
        return self.net

    @property
    def secrets(self) -> Path:
        """The token issuer's keys (tests sign tokens with them)."""
        return self.work / "secrets"

    @property
    def tls_dir(self) -> Path:
        return self.work / "tls"

    @property
    def cluster(self) -> Cluster:
        """The db hosts' Patroni cluster, which start() makes."""
        if self.data is None:
            raise RuntimeError("the topology has no database before start()")
        return self.data

    @property
    def dsn(self) -> str:
        """The shop database on whichever member is the primary, as every host (and this machine) reaches it."""
        return self.cluster.dsn()

    @property
    def base(self) -> str:
        """The gateway, as a storefront reaches it."""
        return f"http://{self.network['gw'].address}:9000"

    def consul(self, host: str = "gw") -> str:
        """The HTTP address of `host`'s Consul agent."""
        return f"{self.network[host].address}:8500"

    def leader(self) -> str:
        """The host whose Consul server leads the cluster now ('' while there is none), asked of the gw agent."""
        try:
            address = _get(f"http://{self.consul()}/v1/status/leader")
        except (OSError, ValueError):
            return ""
        by_address = {self.network[h].address: h for h in CONSUL_SERVERS}
        return by_address.get(str(address).rsplit(":", 1)[0], "")

    def raft_peers(self) -> dict[str, tuple[str, bool]]:
        """The Consul cluster's Raft peers: host -> (server id, whether it votes); {} without an answer."""
        try:
            found = _get(f"http://{self.consul()}/v1/operator/raft/configuration?stale")
        except (OSError, ValueError):
            return {}
        return {s["Node"]: (s["ID"], s["Voter"]) for s in found["Servers"]}

    def passing(self, service: str) -> set[str]:
        """The hosts with a passing instance of `service`, as Consul tells the gateway's host."""
        try:
            found = _get(f"http://{self.consul()}/v1/health/service/{service}?passing=true")
        except (OSError, ValueError):
            return set()
        by_address = {h.address: h.name for h in self.network.hosts.values()}
        return {by_address.get(e["Service"]["Address"], "?") for e in found}

    def everywhere(self) -> bool:
        """Whether every service passes on every app host and the gateway serves a catalog page."""
        if not all(self.passing(s) == set(APP_HOSTS) for s in SERVICE_MODULES):
            return False
        try:
            return http_get(f"{self.base}/catalogs?limit=1", timeout=5)[0] == 200
        except OSError:
            return False

    def token(self, user: str, role: str | None = None) -> str:
        return issue_token(self.secrets, user, role)

    # --- bringing it up ---------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        ensure_certs(self.tls_dir)
        if removed := remove_leftovers(self.tag):  # of a run of the same tag that was killed
            _LOGGER.warning("removed what an earlier run left: %s", " ".join(removed))
        self.net = Network(self.tag, HOSTS, self.subnet)
        try:
            for host in CONSUL_SERVERS:
                self._run(self._consul_spec(host, server=True))
            for host in CONSUL_CLIENTS:
                self._run(self._consul_spec(host, server=False))
            wait_until(lambda: self.leader(), 60, what="a Consul leader")
            _LOGGER.info("a Consul leader: %s", self.leader())
            self._postgres(timeout)
            for host in APP_HOSTS:
                for service in SERVICE_MODULES:
                    self._run(self._service_spec(service, host))
            for spec in gateway_processes(Ports(), self.work / "gateway", self.secrets, tls_dir=self.tls_dir):
                env = dict(spec.env, CONSUL_HTTP_ADDR=self.consul("gw"))
                self._run(ProcessSpec(f"{spec.name}@gw", self.network["gw"].command(spec.argv), env))
            wait_until(self.everywhere, timeout, interval=0.5, what="every service on every host, and the gateway")
        except BaseException:
            self.stop()
            raise

    def _run(self, spec: ProcessSpec) -> Proc:
        self.specs[spec.name] = spec
        self.procs[spec.name] = proc = Proc(spec, self.log_dir)
        return proc

    def restart(self, name: str) -> Proc:
        """Starts the process `name` again, as it was first started (after a kill, say)."""
        return self._run(self.specs[name])

    def _postgres(self, timeout: float) -> None:
        """Starts a Patroni member on each db host, each talking to its host's Consul agent; once one is the
        primary, makes the shop database on it and fills it; returns once every member is healthy."""
        self.pg_home = home = Path(tempfile.mkdtemp(prefix="shop-hosts-pg-"))
        members = tuple(Member(h, PG_PORT, PATRONI_API_PORT, home / h, host=(a := self.network[h].address), listen=a)
                        for h in DB_HOSTS)
        self.data = cluster = Cluster(members, self.consul(DB_HOSTS[0]), archive_dir=home / "wal-archive")
        for member in members:
            # Each member's settings name its own host's agent: a member cut off from the others loses Consul too.
            spec = replace(cluster, consul_addr=self.consul(member.name)).process(member)
            self._run(ProcessSpec(f"patroni@{member.name}", self.network[member.name].command(spec.argv), spec.env))
        ensure_shop_database(cluster, timeout)
        _LOGGER.info("a Postgres primary: %s", cluster.primary())
        asyncio.run(prepare(cluster.dsn(), count=self.products))
        _LOGGER.info("the shop database prepared")
        cluster.wait_healthy(timeout)
        _LOGGER.info("every member healthy")

    def _consul_spec(self, host: str, server: bool) -> ProcessSpec:
        address = self.network[host].address
        joins = [a for h in CONSUL_SERVERS if (a := self.network[h].address) != address]
        argv = [consul_binary(), "agent", "-node", host, "-bind", address, "-client", address,
                "-data-dir", str(self.work / f"consul-{host}"), "-retry-interval", "1s",
                "-config-dir", str(CONSUL_DIR / "agent.d"), "-config-file", str(consul_tls_config(self.tls_dir)),
                # Raft's fastest timing (the production setting): a lost leader is replaced within seconds.
                "-hcl", "performance { raft_multiplier = 1 }",
                *(a for j in joins for a in ("-retry-join", j))]
        if server:
            argv[2:2] = ["-server", "-bootstrap-expect", str(len(CONSUL_SERVERS))]
        return ProcessSpec(f"consul@{host}", self.network[host].command(argv), dict(os.environ))

    def _service_spec(self, service: str, host: str) -> ProcessSpec:
        address = self.network[host].address
        spec = service_process(service, Ports(), self.dsn, port=SERVICE_PORTS[service], tls_dir=self.tls_dir,
                               GRPC_HOST="0.0.0.0", ADVERTISE_ADDRESS=address, CONSUL_HTTP_ADDR=f"{address}:8500",
                               **self.service_env)
        return ProcessSpec(f"{service}@{host}", self.network[host].command(spec.argv), spec.env)

    def stop(self) -> list[str]:
        """Stops every process and removes the hosts and the members' data: the gateway and the services first, then
        the Patroni members (the primary still reaches Consul to give up its lock), then the Consul agents; the
        processes of each tier all at once. Returns the names of those that had to be killed."""
        killed = []
        tiers: dict[int, list[Proc]] = {}
        for name, proc in self.procs.items():
            tiers.setdefault(2 if name.startswith("consul@") else 1 if name.startswith("patroni@") else 0, []).append(proc)
        for _, procs in sorted(tiers.items()):
            for proc in procs:
                proc.signal(signal.SIGTERM)
            for proc in procs:
                if proc.stop(30) == -signal.SIGKILL:
                    _LOGGER.warning("%s did not stop within 30 s of SIGTERM: killed", proc.name)
                    killed.append(proc.name)
        self.procs.clear()
        if self.net is not None:
            self.net.close()
            self.net = None
        if self.pg_home is not None:
            shutil.rmtree(self.pg_home, ignore_errors=True)
            self.pg_home = None
        return killed


def main() -> None:
    """`make hosts`: the topology in the foreground, until Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s hosts: %(message)s")
    if len(sys.argv) > 1 and sys.argv[1] == "down":
        print("removed:", " ".join(remove_leftovers()) or "nothing")
        return
    work = Path(tempfile.mkdtemp(prefix="shop-hosts-"))
    topology = Topology(work, work)
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    topology.start()
    try:
        print(f"gateway: {topology.base}  (try {topology.base}/catalogs?limit=3)")
        print(f"Consul UI: http://{topology.consul('h1')}/ui   leader: {topology.leader()}")
        print(f"Postgres (Patroni cluster of {', '.join(DB_HOSTS)}): {topology.dsn}")
        print(f"hosts: {', '.join(f'{h.name} {h.address} (ip netns exec {h.namespace} ...)' for h in topology.network.hosts.values())}")
        print(f"logs: {work}; Ctrl-C stops it all")
        while not stop:
            time.sleep(0.5)
    finally:
        topology.stop()


if __name__ == "__main__":
    main()
