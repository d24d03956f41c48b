"""The live sale's figures as Prometheus metrics, read in the background for the sale board (docs/monitoring.md)."""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Coroutine, Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from inventory_svc import repository as repo
from inventory_svc.campaigns import MAX_WINDOW, CampaignView, read_campaigns
from shop_runtime.background import periodic
from shop_runtime.clock import Clock
from shop_runtime.config import EnvSettings, setting

_LOGGER = logging.getLogger(__name__)

# The metric names, every one labelled by `sku` (and `campaign` for a campaign item's). Every inventory replica (and
# worker) exports the same figures, so the board takes max by sku.
CAMPAIGN = "shop_sale_campaign"  # 1 per campaign watched: {campaign, name, status}
QUOTA = "shop_sale_quota"
REMAINING = "shop_sale_remaining"
HELD = "shop_sale_held"
SOLD = "shop_sale_sold"
RETURNED = "shop_sale_returned"
BUYERS = "shop_sale_buyers"
REFUSED = "shop_sale_refused"  # counter: shop_sale_refused_total{campaign, sku, reason}
ON_HAND = "shop_sale_stock_on_hand"
STOCK_HELD = "shop_sale_stock_held"
SET_ASIDE = "shop_sale_stock_set_aside"
AVAILABLE = "shop_sale_stock_available"
WATCHED = "shop_sale_watched"  # 1 per SKU watched: {sku, why="campaign"|"hot"}
WINDOW_UNITS = "shop_sale_window_units"  # units held + sold in the hot window (the hot rule's score)
ADDS = "shop_sale_adds"  # counter: holds made (shop_sale_adds_total), so rate() is adds per second
ADDED_UNITS = "shop_sale_added_units"  # counter: units of those holds
SOLD_UNITS = "shop_sale_sold_units"  # counter: units committed (paid)
PASS_SECONDS = "shop_sale_figures_pass_seconds"  # how long the last pass took
UPDATED = "shop_sale_figures_updated_seconds"  # the database's clock at the last pass (unix seconds)
LEDGER_ROWS = "shop_sale_figures_ledger_rows"  # counter: ledger rows the passes read

# Ledger rows summed per statement, and statements per pass: a pass never reads more than this; a backlog waits
# for the next pass (a sale's adds arrive far slower than this in five seconds).
PAGE = 10000
MAX_PAGES = 20
# The first pass reads back this many ledger ids, so a replica that starts mid-sale sees the hot window at once.
BACK_READ = 20000
# An id the tail skipped may belong to a transaction that commits later (ids are drawn at insert, not commit): it
# is looked for again for this long, then taken for rolled back. At most MAX_GAPS are kept.
GAP_SECONDS = 60.0
MAX_GAPS = 10000
# Campaigns watched at once: the soonest first.
MAX_CAMPAIGNS = 20


@dataclass(frozen=True)
class SaleFiguresSettings(EnvSettings):
    """The exporter's settings."""

    # Seconds between passes; 0 turns the exporter off.
    interval_seconds: float = setting("INVENTORY_SALE_FIGURES_INTERVAL_SECONDS", 5.0)
    # How many hot SKUs are watched besides the campaigns' SKUs.
    hot_skus: int = setting("INVENTORY_SALE_FIGURES_HOT_SKUS", 10, minimum=0, maximum=100)
    # The hot window: a SKU's units held and sold within it rank it.
    window_seconds: float = setting("INVENTORY_SALE_FIGURES_WINDOW_SECONDS", 300.0)
    # A campaign starting within this many seconds is watched already (its quota shown before it opens).
    soon_seconds: float = setting("INVENTORY_SALE_FIGURES_SOON_SECONDS", 900.0)


@dataclass
class _Tally:
    """What the tail of the ledger said of one SKU since this process began reading it."""

    adds: int = 0
    added_units: int = 0
    sold_units: int = 0


@dataclass
class Snapshot:
    """The figures of one pass, as the metric families a scrape answers."""

    families: list[Metric] = field(default_factory=list)


# Live or starting soon, not cancelled before it started; a live one started at most MAX_WINDOW ago (a campaign
# lasts at most that), so the range on campaigns_window_idx (starts_at, id) is bounded both ways.
_WATCHED_CAMPAIGNS = """
    SELECT c.id::text FROM inventory.campaigns c
     WHERE c.starts_at > %(now)s - %(longest)s AND c.starts_at <= %(now)s + make_interval(secs => %(soon)s)
       AND c.ends_at > %(now)s AND NOT (c.cancelled_at IS NOT NULL AND c.cancelled_at <= c.starts_at)
     ORDER BY c.starts_at, c.id LIMIT %(limit)s
"""
# The ledger's tail, by its primary key: the last id of the next `limit` rows after the last id read (an index-only
# range), then those rows summed in the database per SKU and window bucket (HOLD: an add; COMMIT: units sold), so
# only a few rows reach Python whatever the rate of adds, with, in the same statement (one snapshot), the ids of
# the range that are not there (gaps: a transaction still open, or rolled back).
_TAIL_END = ("SELECT max(id), count(*) FROM (SELECT id FROM inventory.ledger WHERE id > %s ORDER BY id LIMIT %s) r")
_TAIL = """
    WITH r AS (
        SELECT id, sku, reason, reserved_delta, on_hand_delta, created_at FROM inventory.ledger
         WHERE id > %(after)s AND id <= %(upto)s
    )
    SELECT sku, floor(extract(epoch FROM created_at) / %(width)s)::bigint,
           (count(*) FILTER (WHERE reason = 'HOLD'))::int,
           COALESCE(sum(reserved_delta) FILTER (WHERE reason = 'HOLD'), 0)::int,
           COALESCE(sum(-on_hand_delta) FILTER (WHERE reason = 'COMMIT'), 0)::int, NULL::bigint
      FROM r WHERE reason IN ('HOLD', 'COMMIT') GROUP BY 1, 2
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, g FROM generate_series(%(after)s + 1, %(upto)s) g
     WHERE %(complete)s IS FALSE AND NOT EXISTS (SELECT 1 FROM r WHERE r.id = g)
"""
# The same sums over ids skipped before, with the ids found.
_GAPS = """
    SELECT sku, floor(extract(epoch FROM created_at) / %(width)s)::bigint,
           (reason = 'HOLD')::int, CASE WHEN reason = 'HOLD' THEN reserved_delta ELSE 0 END,
           CASE WHEN reason = 'COMMIT' THEN -on_hand_delta ELSE 0 END, id
      FROM inventory.ledger WHERE id = ANY(%(ids)s::bigint[])
"""


class SaleFigures:
    """Reads the sale's figures every pass and answers them to Prometheus (a prometheus_client collector).

    Nothing here takes a SKU's advisory lock or writes: the figures are read as the admin API reads them
    (campaigns.read_campaigns, repository.effective_stock), and the adds from the ledger's tail by its primary key.
    """

    def __init__(self, pool: AsyncConnectionPool, clock: Clock, settings: SaleFiguresSettings | None = None):
        self._pool = pool
        self._clock = clock
        self._settings = settings or SaleFiguresSettings()
        self._cursor: int | None = None  # the highest ledger id read
        self._gaps: dict[int, float] = {}  # id skipped -> when first skipped (monotonic)
        self._tallies: dict[str, _Tally] = {}
        # The hot window in buckets of one pass interval: bucket number -> sku -> units held + sold.
        self._buckets: dict[int, collections.Counter[str]] = {}
        self._ledger_rows = 0
        self.snapshot = Snapshot()

    # --- a pass ---------------------------------------------------------------------------------------------

    async def pass_once(self) -> None:
        """Reads the figures once and replaces the snapshot a scrape answers."""
        started = time.perf_counter()
        async with self._pool.connection() as conn:
            now = await self._clock.db_now(conn)
            await self._read_tail(conn)
            self._expire_window(now)
            cur = await conn.execute(_WATCHED_CAMPAIGNS, dict(now=now, longest=MAX_WINDOW,
                                                             soon=self._settings.soon_seconds, limit=MAX_CAMPAIGNS))
            ids = [r[0] for r in await cur.fetchall()]
            # Pipeline mode: read_campaigns's three statements travel together.
            async with conn.pipeline():
                campaigns = await read_campaigns(conn, ids, now)
            campaign_skus = {i.sku for c in campaigns for i in c.items}
            hot = self.hot_skus(exclude=campaign_skus)
            watched = sorted(campaign_skus | set(hot))
            stock = await repo.effective_stock(conn, watched, now) if watched else {}
        # SKUs neither watched nor in the window are forgotten: the tallies stay as few as the SKUs being sold.
        in_window = set().union(*self._buckets.values()) if self._buckets else set()
        for sku in [s for s in self._tallies if s not in in_window and s not in watched]:
            del self._tallies[sku]
        self.snapshot = self._families(now, campaigns, campaign_skus, hot, stock, time.perf_counter() - started)

    async def _read_tail(self, conn: AsyncConnection) -> None:
        """Reads the ledger's new rows (and skipped ids that have since committed) into the tallies and window."""
        if self._cursor is None:
            cur = await conn.execute("SELECT COALESCE(max(id), 0) FROM inventory.ledger")
            row = await cur.fetchone()
            assert row is not None  # an aggregate without GROUP BY: one row
            self._cursor = max(0, row[0] - BACK_READ)
        clock = time.monotonic()
        width = self._settings.interval_seconds or 5.0
        if self._gaps:
            cur = await conn.execute(_GAPS, dict(ids=list(self._gaps), width=width))
            for sku, bucket, adds, added, sold, found in await cur.fetchall():
                self._gaps.pop(found, None)
                self._add(sku, bucket, adds, added, sold)
                self._ledger_rows += 1
            for gap in [g for g, first in self._gaps.items() if clock - first > GAP_SECONDS]:
                del self._gaps[gap]
        for _ in range(MAX_PAGES):
            cur = await conn.execute(_TAIL_END, (self._cursor, PAGE))
            row = await cur.fetchone()
            assert row is not None  # an aggregate without GROUP BY: one row
            upto, rows = row
            if upto is None:
                break
            cur = await conn.execute(_TAIL, dict(after=self._cursor, upto=upto, width=width,
                                                 complete=rows == upto - self._cursor))
            for sku, bucket, adds, added, sold, missing in await cur.fetchall():
                if missing is not None:
                    self._gaps.setdefault(missing, clock)
                else:
                    self._add(sku, bucket, adds, added, sold)
            self._ledger_rows += rows
            self._cursor = upto
            if rows < PAGE:
                break
        while len(self._gaps) > MAX_GAPS:  # the oldest first (dicts keep insertion order)
            del self._gaps[next(iter(self._gaps))]

    def _add(self, sku: str, bucket: int, adds: int, added_units: int, sold_units: int) -> None:
        if not (adds or sold_units):
            return
        tally = self._tallies.setdefault(sku, _Tally())
        tally.adds += adds
        tally.added_units += added_units
        tally.sold_units += sold_units
        self._buckets.setdefault(bucket, collections.Counter())[sku] += added_units + sold_units

    def _expire_window(self, now: datetime) -> None:
        width = self._settings.interval_seconds or 5.0
        oldest = int((now.timestamp() - self._settings.window_seconds) // width)
        for bucket in [b for b in self._buckets if b < oldest]:
            del self._buckets[bucket]

    def window_units(self) -> collections.Counter[str]:
        """sku -> units held and sold within the hot window."""
        total: collections.Counter[str] = collections.Counter()
        for bucket in self._buckets.values():
            total.update(bucket)
        return total

    def hot_skus(self, exclude: set[str] = set()) -> list[str]:
        """The hot SKUs: the most units held and sold within the window (ties by SKU), campaigns' SKUs aside."""
        ranked = sorted(((-units, sku) for sku, units in self.window_units().items() if sku not in exclude and units > 0))
        return [sku for _, sku in ranked[:self._settings.hot_skus]]

    # --- the metrics -------------------------------------------------------------------------------------------

    def _families(self, now: datetime, campaigns: list[CampaignView], campaign_skus: set[str], hot: list[str],
                  stock: dict[str, repo.StockRow], seconds: float) -> Snapshot:
        info = GaugeMetricFamily(CAMPAIGN, "A campaign live or starting soon, watched by the sale board",
                                 labels=["campaign", "name", "status"])
        item_gauges = {
            name: GaugeMetricFamily(name, text, labels=["campaign", "sku"]) for name, text in (
                (QUOTA, "A campaign item's quota"),
                (REMAINING, "Units of the quota neither held nor sold (the quota left)"),
                (HELD, "Units of the quota in carts and orders awaiting payment"),
                (SOLD, "Units of the quota in paid orders"),
                (RETURNED, "Units of the quota back in regular stock"),
                (BUYERS, "Users who bought from the quota"),
            )}
        refused = CounterMetricFamily(REFUSED, "Adds of a campaign item refused, by reason",
                                      labels=["campaign", "sku", "reason"])
        for c in campaigns:
            info.add_metric([c.id, c.name, c.status], 1)
            for item in c.items:
                for name, value in ((QUOTA, item.quota), (REMAINING, item.remaining), (HELD, item.held),
                                    (SOLD, item.sold), (RETURNED, item.returned), (BUYERS, item.buyers)):
                    item_gauges[name].add_metric([c.id, item.sku], value)
                for reason, count in sorted(item.refused.items()):
                    refused.add_metric([c.id, item.sku, reason], count)
        stock_gauges = {
            name: GaugeMetricFamily(name, text, labels=["sku"]) for name, text in (
                (ON_HAND, "Units on hand of a watched SKU"),
                (STOCK_HELD, "Units of a watched SKU held (carts, orders awaiting payment), quota holds included"),
                (SET_ASIDE, "Units of a watched SKU set aside as campaign quotas, neither held nor sold"),
                (AVAILABLE, "Units of a watched SKU a buyer can hold at the regular price"),
            )}
        for sku, row in sorted(stock.items()):
            for name, value in ((ON_HAND, row.on_hand), (STOCK_HELD, row.reserved), (SET_ASIDE, row.set_aside),
                                (AVAILABLE, row.available)):
                stock_gauges[name].add_metric([sku], value)
        watched = GaugeMetricFamily(WATCHED, "A SKU the sale board watches, and why (campaign or hot)",
                                    labels=["sku", "why"])
        window = GaugeMetricFamily(WINDOW_UNITS, "Units of a watched SKU held and sold within the hot window",
                                   labels=["sku"])
        adds = CounterMetricFamily(ADDS, "Holds made of a watched SKU (adds), since this process began counting",
                                   labels=["sku"])
        added = CounterMetricFamily(ADDED_UNITS, "Units of the holds made of a watched SKU", labels=["sku"])
        sold_units = CounterMetricFamily(SOLD_UNITS, "Units of a watched SKU committed (paid)", labels=["sku"])
        units = self.window_units()
        for sku in sorted(campaign_skus | set(hot)):
            watched.add_metric([sku, "campaign" if sku in campaign_skus else "hot"], 1)
            window.add_metric([sku], units.get(sku, 0))
            tally = self._tallies.get(sku, _Tally())
            adds.add_metric([sku], tally.adds)
            added.add_metric([sku], tally.added_units)
            sold_units.add_metric([sku], tally.sold_units)
        pass_seconds = GaugeMetricFamily(PASS_SECONDS, "How long the sale figures' last pass took", value=seconds)
        updated = GaugeMetricFamily(UPDATED, "The database's clock at the sale figures' last pass",
                                    value=now.timestamp())
        rows = CounterMetricFamily(LEDGER_ROWS, "Ledger rows the sale figures' passes read", value=self._ledger_rows)
        return Snapshot([info, *item_gauges.values(), refused, *stock_gauges.values(), watched, window, adds, added,
                         sold_units, pass_seconds, updated, rows])

    def collect(self) -> Iterator[Metric]:
        """The last pass's figures (a scrape reads no database)."""
        return iter(self.snapshot.families)


def exporter(pool: AsyncConnectionPool, clock: Clock, settings: SaleFiguresSettings | None = None,
             registry: CollectorRegistry = REGISTRY) -> Callable[[], Coroutine[Any, Any, None]] | None:
    """The background task (GrpcApp.background) that keeps the sale's figures, registered in `registry` while it
    runs; None when turned off (an interval of 0)."""
    settings = settings or SaleFiguresSettings.from_env()
    if settings.interval_seconds <= 0:
        return None

    async def work() -> bool:
        await figures.pass_once()
        return False

    figures = SaleFigures(pool, clock, settings)
    loop = periodic("inventory-sale-figures", work, settings.interval_seconds)

    async def run() -> None:
        registry.register(figures)
        try:
            await loop()
        finally:
            registry.unregister(figures)

    run.__name__ = "inventory-sale-figures"
    return run
