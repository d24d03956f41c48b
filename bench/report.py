"""The flash-sale bench's table: what a figure is, the order of the figures, and the report printed after a run."""

from __future__ import annotations

import argparse
import shlex
import statistics
from dataclasses import dataclass, field
from typing import Protocol

from bench.memory import PeakMemory

# Figure keys, in the order they are measured; --only picks some.
FIGURES = ("noop-grpc", "holds", "sql", "pgbench", "noop-get", "noop-post", "chart", "campaign-chart", "checkout",
           "payment", "product", "listing", "import")
# Whole purchases (bench/purchases.py): measured when asked for by --only, and by the comparison of one server with
# a cluster (--pg-members), whose question is what synchronous replication costs a purchase.
PURCHASE_FIGURES = ("checkout", "payment")
# What a run without --only measures.
DEFAULT_FIGURES = tuple(f for f in FIGURES if f not in PURCHASE_FIGURES)


def wanted_figures(args: argparse.Namespace) -> set[str]:
    """The figures a run measures: --only's, else the default ones (and the purchases when comparing databases)."""
    if args.only:
        return set(args.only)
    return set(DEFAULT_FIGURES) | (set(PURCHASE_FIGURES) if getattr(args, "pg_members", 1) > 1 else set())


@dataclass
class Figure:
    """One line of the table."""

    name: str
    rate: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    # (ratio, what it is a ratio to, the target or None) for each ceiling it is compared with.
    ratios: list[tuple[float, str, float | None]] = field(default_factory=list)


def pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


class Measured(Protocol):
    """What the report reads of a run: its options, its figures, and what it saw of the suite."""

    args: argparse.Namespace
    figures: dict[str, Figure]
    envoy_threads: str
    memory: PeakMemory
    notes: list[str]
    database: str


def _statuses(statuses: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in statuses.items())


def report(bench: Measured, argv: list[str], violations: list[str] | None) -> str:
    """The table, the memory figures, the notes and the command that reproduces the run."""
    args = bench.args
    figures = [bench.figures[k] for k in FIGURES if k in bench.figures]
    width = max([len(f.name) for f in figures] + [len("figure")])
    out = [f"\nflash-sale bench: {args.workers} worker process(es) per service, Envoy with {bench.envoy_threads}"
           f" worker threads, {args.products} products; each figure {args.duration:g} s after {args.warmup:g} s"
           f" of warm-up; load generators on the same machine; gRPC between processes "
           f"{'in plaintext (--plaintext)' if args.plaintext else 'over mutual TLS'}; Postgres: {bench.database}\n"]
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


# The figures whose cost the comparison of one server with a cluster is about: the hot SKU's add, checkout, payment.
REPLICATION_FIGURES = ("chart", "checkout", "payment")


def comparison(one: Measured, cluster: Measured) -> str:
    """Each figure measured on one server and on the cluster, side by side, with the cluster's rate as a ratio of
    one server's (below 1: what synchronous replication costs) and the same of the p50 latency."""
    keys = [k for k in FIGURES if k in one.figures and k in cluster.figures]
    width = max([len(one.figures[k].name) for k in keys] + [len("figure")])
    out = [f"\nPostgres: one server ({one.database}) against a cluster ({cluster.database}), in one run",
           f"{'figure':{width}} {'one: req/s':>10} {'p50':>6} {'p99':>6} {'cluster: req/s':>14} {'p50':>6} {'p99':>6}"
           f" {'rate ratio':>10} {'p50 ratio':>9}"]
    out.append("-" * len(out[-1]))
    for key in keys:
        a, b = one.figures[key], cluster.figures[key]
        # A side with no answer at all in the window has no ratio.
        rate = f"{b.rate / a.rate:.2f}" if a.rate and b.rate else "-"
        p50 = f"{b.p50_ms / a.p50_ms:.2f}" if a.p50_ms and b.p50_ms else "-"
        out.append(f"{a.name:{width}} {a.rate:10.1f} {a.p50_ms:6.0f} {a.p99_ms:6.0f} {b.rate:14.1f} {b.p50_ms:6.0f}"
                   f" {b.p99_ms:6.0f} {rate:>10} {p50:>9}")
    costs = [f"{key} {cluster.figures[key].rate / one.figures[key].rate:.2f}" for key in REPLICATION_FIGURES
             if key in keys and one.figures[key].rate and cluster.figures[key].rate]
    if costs:
        out.append(f"\nnote: synchronous replication, as the cluster's rate over one server's: {', '.join(costs)}")
    return "\n".join(out)
