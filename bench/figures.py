"""The flash-sale bench's figures: the load each puts on a running suite, and their ratios to their ceilings."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench import grpc_load, pgbench, purchases, wrk
from bench.holds import plain_sql
from bench.noop_gateway import NOOP_GET_PATH, NOOP_POST_PATH
from bench.report import FIGURES, PURCHASE_FIGURES, Figure, pct, wanted_figures
from bench.suite import Suite
from catalog_svc.admin import MAX_BATCH as IMPORT_BATCH
from devstack.import_catalog import generate, run_import
from gateway.identity import issue_token

_LOGGER = logging.getLogger("bench")

# The hot product of the REST figures: the demo catalog's first product ("Wireless Mouse"), always there.
HOT_SKU = "EL-0001"
# The campaign figure's SKU: the demo catalog's second product, on sale in a live campaign for the whole run.
CAMPAIGN_SKU = "EL-0002"
# Its sale price and quota: the lowest price, so the largest quota the store allows (quota x sale price fits a JSON
# number), leaving every add to be decided from the quota.
CAMPAIGN_SALE_PRICE = 1
CAMPAIGN_QUOTA = 900_000
# The products the import figure loads through POST /admin/products:batchUpsert, as `make import` does.
IMPORT_PRODUCTS = 100_000
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


def _http(method: str, url: str, token: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Bench(Suite):
    """A running suite and the measurements made on it."""

    def __init__(self, args: argparse.Namespace, work: Path, pg_members: int = 1) -> None:
        super().__init__(args, work, pg_members)
        self.figures: dict[str, Figure] = {}
        self.warmups: dict[str, wrk.RestRun] = {}
        self._users: list[str] = []
        self._sale_users: list[str] = []
        self._buyers: list[str] = []
        self._admin = ""

    # --- the figures -----------------------------------------------------------------------------------

    def _grpc(self, key: str, name: str, kind: str, sku: str = "") -> None:
        args = self.args
        targets = self._targets("inventory")
        _LOGGER.info("%s: %d callers in %d process(es) on %s, %ss", name, args.grpc_callers, args.grpc_clients,
                     ", ".join(targets), args.duration)
        run = grpc_load.run(grpc_load.Load(
            targets=targets, kind=kind, callers=args.grpc_callers, seconds=args.duration,
            warmup_seconds=args.warmup, processes=args.grpc_clients, sku=sku, tls_dir=str(self.tls_dir or "")))
        self.figures[key] = Figure(name, run.rate, pct(run.latencies_ms, 50), pct(run.latencies_ms, 99),
                                   dict(run.codes))
        self.memory.sample()

    def _pgbench(self) -> None:
        args = self.args
        name = f"ceiling: 1 tx per hold, pgbench, {args.sql_clients} conns"
        _LOGGER.info("%s, %ss", name, args.duration)
        rate, latencies = pgbench.one_tx_per_hold(self.dsn, args.sql_clients, args.duration, args.warmup)
        self.figures["pgbench"] = Figure(name, rate, pct(latencies, 50), pct(latencies, 99))
        self.memory.sample()

    def _sql(self) -> None:
        args = self.args
        name = f"ceiling: 1 tx per hold, Python client, {args.sql_clients} conns"
        _LOGGER.info("%s, %ss", name, args.duration)
        asyncio.run(plain_sql(self.dsn, args.sql_clients, 10_000, args.warmup))
        rate, latencies = asyncio.run(plain_sql(self.dsn, args.sql_clients, 10_000_000, args.duration))
        self.figures["sql"] = Figure(name, rate, pct(latencies, 50), pct(latencies, 99))
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

    def measure(self) -> None:
        """Every figure selected, one after another."""
        self.prepare_figures()
        for unit in self.units():
            self.measure_figure(unit)
        self.finish_figures()

    def units(self) -> list[str]:
        """The measurements a run makes, in order: one per figure selected, checkout and payment in one."""
        wanted = wanted_figures(self.args)
        return [k for k in FIGURES if k in wanted and not (k == "payment" and "checkout" in wanted)]

    def prepare_figures(self) -> None:
        """What the figures need before the first: every token signed, the SKUs stocked, the campaign open."""
        args = self.args
        wanted = wanted_figures(args)
        # Every token is in hand before the first measurement, so no signing runs beside one.
        tokens = self._tokens() if wanted & {"noop-post", "chart", "campaign-chart", *PURCHASE_FIGURES} else []
        # The buyers of the purchase figures are users of their own, last (Suite._sign_tokens).
        self._buyers = tokens[len(tokens) - self.buyers:]
        tokens = tokens[:len(tokens) - self.buyers]
        self._users, self._sale_users = tokens[:args.users], tokens[args.users:] or tokens[:args.users]
        self._admin = issue_token(self.secrets, "bench-admin", "admin")
        for sku in (HOT_SKU, GRPC_HOT_SKU, CAMPAIGN_SKU):
            _http("PUT", f"{self.base_url}/admin/stock/{sku}", self._admin, {"onHand": MAX_ON_HAND})
        if "campaign-chart" in wanted:
            self._open_campaign(self._admin)

    def measure_figure(self, key: str) -> None:
        """The figure `key` (checkout and payment: both)."""
        args = self.args
        if key == "noop-grpc":
            self._grpc("noop-grpc", f"ceiling: no-op gRPC, {args.grpc_callers} callers", grpc_load.NOOP)
        elif key == "holds":
            self._grpc("holds", f"gRPC holds, 1 hot SKU, {args.grpc_callers} callers", grpc_load.HOLDS,
                       GRPC_HOT_SKU)
        elif key == "sql":
            self._sql()
        elif key == "pgbench":
            self._pgbench()
        elif key == "noop-get":
            self._rest("noop-get", "ceiling: no-op REST via Envoy, GET", [NOOP_GET_PATH])
        elif key == "noop-post":
            self._rest("noop-post", "ceiling: no-op REST via Envoy, POST + token", [NOOP_POST_PATH],
                       tokens=self._users, method="POST", body='{"service": ""}')
        elif key == "chart":
            body = json.dumps({"sku": HOT_SKU, "qty": 1})
            self._rest("chart", f"POST /chart, 1 hot SKU, {args.users} users", ["/chart"], tokens=self._users,
                       method="POST", body=body)
            self._check_chart()
        elif key == "campaign-chart":
            body = json.dumps({"sku": CAMPAIGN_SKU, "qty": 1})
            self._rest("campaign-chart", f"POST /chart, 1 live campaign SKU, {args.users} users", ["/chart"],
                       tokens=self._sale_users, method="POST", body=body)
            self._check_campaign()
        elif key in PURCHASE_FIGURES:
            self._purchases(self._buyers)
        elif key == "product":
            self._rest("product", f"GET /catalogs/{HOT_SKU} (the hot SKU)", [f"/catalogs/{HOT_SKU}"])
        elif key == "listing":
            paths = [f"/catalogs?search={s}&sortBy={by}&sortDir={d}&limit=20"
                     for s in LISTING_SEARCHES for by, d in LISTING_SORTS]
            self._rest("listing", f"GET /catalogs search+sort, {args.products} products", paths)
        elif key == "import":
            # Last of FIGURES: it adds products, which the listing figure would otherwise count too.
            self._import(self._admin)
        else:
            raise ValueError(f"unknown figure {key}")

    def finish_figures(self) -> None:
        """The ratios of the figures measured to their ceilings."""
        self._ratios()

    def _purchases(self, buyers: list[str]) -> None:
        """Shoppers each buying one unit of the hot SKU after another: add, checkout, payment; a figure of each of
        the last two (the add's figure is POST /chart's; the loop's own adds are in a note)."""
        args = self.args
        _LOGGER.info("purchases of %s: %d shoppers, %ss", HOT_SKU, args.shoppers, args.duration)
        run = purchases.run(self.base_url, HOT_SKU, buyers, shoppers=args.shoppers, seconds=args.duration,
                            warmup_seconds=args.warmup)
        for step, path in (("checkout", "POST /checkout"), ("payment", "POST /payment")):
            latencies = run.latencies_ms[step]
            self.figures[step] = Figure(f"{path} of 1 hot unit, {args.shoppers} shoppers buying", run.rate(step),
                                        pct(latencies, 50), pct(latencies, 99), dict(run.statuses[step]))
        adds = run.latencies_ms["add"]
        self.notes.append(f"purchases: each shopper adds 1 unit of {HOT_SKU}, checks out and pays, then again as"
                          f" another user; their adds: {run.rate('add'):.0f}/s, p50 {pct(adds, 50):.1f} ms, p99"
                          f" {pct(adds, 99):.1f} ms, answers {dict(run.statuses['add'])}")
        self.memory.sample()

    def _open_campaign(self, admin: str) -> None:
        """A campaign of CAMPAIGN_SKU live from a second ago for an hour, by the store's clock."""
        with urllib.request.urlopen(f"{self.base_url}/campaigns", timeout=10) as resp:
            now = datetime.fromisoformat(json.loads(resp.read())["serverTime"].replace("Z", "+00:00"))
        campaign = _http("POST", f"{self.base_url}/admin/campaigns", admin, {
            "name": "bench sale", "startsAt": _rfc3339(now - timedelta(seconds=1)),
            "endsAt": _rfc3339(now + timedelta(hours=1)),
            "items": [{"sku": CAMPAIGN_SKU, "salePrice": CAMPAIGN_SALE_PRICE, "quota": CAMPAIGN_QUOTA,
                       "maxPerUser": 0}]})
        assert campaign["status"] == "LIVE", campaign
        self.campaign_id = campaign["campaignId"]

    def _check_campaign(self) -> None:
        """The campaign figure measures adds from the quota: its report counts them held at the sale price."""
        report = _http("GET", f"{self.base_url}/admin/campaigns/{self.campaign_id}",
                       issue_token(self.secrets, "bench-admin", "admin"))
        (item,) = report["items"]
        added = self.figures["campaign-chart"].statuses.get("200", 0)
        warm = self.warmups.get("campaign-chart")
        added += warm.statuses.get("200", 0) if warm else 0
        if item["held"] < added:
            self.notes.append(f"POST /chart of the campaign SKU: {added} adds answered 200 but only {item['held']}"
                              " units held from the quota")
        self.notes.append(f"POST /chart of the campaign SKU: {item['held']} units held from the quota at the sale"
                          f" price, refusals {item['refused'] or 'none'}")

    def _import(self, admin: str) -> None:
        """`make import` of IMPORT_PRODUCTS generated products through the gateway (the same code, in process)."""
        path = self.work / "import-sample.csv"
        generate(path, IMPORT_PRODUCTS)
        name = f"make import: {IMPORT_PRODUCTS:,} products, batches of {IMPORT_BATCH:,}"
        _LOGGER.info("%s", name)
        done = run_import(path, self.base_url, admin, max_rows=IMPORT_BATCH, progress=False)
        batches = -(-int(done["sent"]) // IMPORT_BATCH)
        per_batch_ms = done["seconds"] * 1000 / batches if batches else 0.0
        # A figure of products per second; its two latencies are the mean time of one batch (not percentiles).
        self.figures["import"] = Figure(name, done["per_second"], per_batch_ms, per_batch_ms,
                                        {"created": int(done["created"]), "updated": int(done["updated"])})
        self.notes.append(f"make import: {int(done['created']):,} created, {int(done['updated']):,} updated in"
                          f" {done['seconds']:.1f} s; its p50 and p99 are the mean time of one batch")
        self.memory.sample()

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
        # Adds of a live campaign's SKU hold from its quota: the issue's target is 0.9 of the plain add's rate.
        ratio("campaign-chart", "chart", "plain POST /chart", 0.9)
        ratio("product", "noop-get", "no-op GET", 0.6)
        ratio("listing", "noop-get", "no-op GET", 0.5)
        ratio("noop-post", "noop-get", "no-op GET")
