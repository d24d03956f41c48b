"""The campaigns' rules on the catalog's side: the checks a new campaign's products and sale prices must pass, the
campaigns a storefront is shown (and when), and the figures a merchant follows, each with the catalog's names and
regular prices.

Inventory owns a campaign (window, sale prices, quotas, per-user limits, figures; DESIGN.md "Campaigns: who owns
what"); this module asks it and keeps nothing of its own but short-lived answers. A kept answer's `status` and
`serverTime` are worked out when it is sent, from the database's clock as last measured (ServerClock), so a
storefront's countdown and a campaign's flip to LIVE are never behind by more than the measuring error (a call's
round trip), whatever the cache's age.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable, Mapping, Protocol

from google.protobuf import timestamp_pb2
from psycopg_pool import AsyncConnectionPool

from catalog_svc import repository
from catalog_svc.cache import AnswerCache, Timer
from catalog_svc.model import ProductRow
from shop.inventory.v1 import inventory_pb2
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.reasons import refuse
from shop_runtime.validation import page_and_limit

# A storefront shows the campaigns live now or starting within this long (API.md), and a product the campaign of
# its SKU live now or starting within it.
SHOWN_AHEAD = timedelta(hours=24)
# A campaign that ended longer ago than this is CAMPAIGN_NOT_FOUND on the public routes ("long-ended").
PUBLIC_AFTER_END = timedelta(hours=24)
# The most items of one campaign (API.md; inventory checks it too, but the catalog reads the products first).
MAX_ITEMS = 100
# Campaigns per ListCampaigns call to inventory (its page's maximum).
INVENTORY_PAGE = 100
# The most pages of campaigns read for one answer: 1,000 campaigns live or within 24 hours, far beyond a store's.
MAX_PAGES = 10

SCHEDULED, LIVE, ENDED, CANCELLED = "SCHEDULED", "LIVE", "ENDED", "CANCELLED"
STATUSES = (SCHEDULED, LIVE, ENDED, CANCELLED)
# Statuses a storefront shows on a product and in GET /campaigns.
SHOWN = (SCHEDULED, LIVE)


class CampaignInventory(Protocol):
    """What the campaigns' rules ask of inventory (inventory_svc.client.InventoryClient, or a fake in tests)."""

    async def create_campaign(self, request: inventory_pb2.CreateCampaignRequest, *,
                              user: str | None = None) -> inventory_pb2.Campaign: ...

    async def cancel_campaign(self, campaign_id: str, key: str, *,
                              user: str | None = None) -> inventory_pb2.Campaign: ...

    async def campaigns(self, campaign_ids: list[str]) -> inventory_pb2.GetCampaignsResponse: ...

    async def list_campaigns(self, request: inventory_pb2.ListCampaignsRequest) -> inventory_pb2.ListCampaignsResponse: ...


def _utc(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=timezone.utc)


class ServerClock:
    """The database's clock as this process last measured it: each inventory answer carries the database's time
    (`server_time`), and the offset from this machine's clock is kept. `now()` is this machine's clock plus that
    offset: behind the database by at most the round trip of the call it was measured on. Before any measure,
    this machine's clock."""

    def __init__(self, wall: Callable[[], float] = time.time):
        self._wall = wall
        self._offset = 0.0

    def observe(self, server_time: datetime) -> None:
        """Measures the offset from an answer's server_time, read just now."""
        self._offset = server_time.timestamp() - self._wall()

    def now(self) -> datetime:
        """The database's clock now, as estimated."""
        return datetime.fromtimestamp(self._wall() + self._offset, tz=timezone.utc)


@dataclass(frozen=True)
class SaleItem:
    """One SKU of a campaign with its figures when read (inventory's CampaignItem)."""

    sku: str
    sale_price: int
    quota: int
    max_per_user: int
    held: int
    sold: int
    remaining: int
    returned: int
    revenue: int
    buyers: int
    # Refused adds by reason, sorted by reason.
    refused: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, m: inventory_pb2.CampaignItem) -> "SaleItem":
        """The record of inventory's message."""
        return cls(m.sku, m.sale_price, m.quota, m.max_per_user, m.held, m.sold, m.remaining, m.returned, m.revenue,
                   m.buyers, tuple(sorted(m.refused.items())))


@dataclass(frozen=True)
class Campaign:
    """A campaign as inventory answered it: its status then, its window, its items and their figures."""

    campaign_id: str
    name: str
    # The status when inventory read it; status_at() tells it at another instant.
    status: str
    starts_at: datetime
    ends_at: datetime
    created_at: datetime
    created_by: str
    cancelled_at: datetime | None
    items: tuple[SaleItem, ...]

    @classmethod
    def of(cls, m: inventory_pb2.Campaign) -> "Campaign":
        """The record of inventory's message."""
        return cls(m.campaign_id, m.name, inventory_pb2.CampaignStatus.Name(m.status), _utc(m.starts_at),
                   _utc(m.ends_at), _utc(m.created_at), m.created_by,
                   _utc(m.cancelled_at) if m.HasField("cancelled_at") else None,
                   tuple(SaleItem.of(i) for i in m.items))

    def status_at(self, now: datetime) -> str:
        """The status at `now`, from the window: a kept answer's SCHEDULED turns LIVE at starts_at and LIVE turns
        ENDED at ends_at, without asking inventory again. CANCELLED and ENDED stay as they were read."""
        if self.status in (CANCELLED, ENDED):
            return self.status
        if now >= self.ends_at:
            return ENDED
        return LIVE if now >= self.starts_at else SCHEDULED

    def shown_at(self, now: datetime) -> bool:
        """True when a storefront shows it at `now`: live, or scheduled to start within SHOWN_AHEAD."""
        return self.status_at(now) in SHOWN and self.starts_at <= now + SHOWN_AHEAD

    def public_at(self, now: datetime) -> bool:
        """True when GET /campaigns/{id} answers it at `now`: neither cancelled nor ended over PUBLIC_AFTER_END ago."""
        status = self.status_at(now)
        return status != CANCELLED and not (status == ENDED and self.ends_at <= now - PUBLIC_AFTER_END)

    def item(self, sku: str) -> SaleItem | None:
        """The campaign's item of `sku`, if it has one."""
        return next((i for i in self.items if i.sku == sku), None)


def shown_campaign(candidates: tuple[Campaign, ...], now: datetime) -> tuple[Campaign, str] | None:
    """Of a SKU's campaigns (soonest start first), the one a product shows at `now` and its status then: the
    first live or starting within SHOWN_AHEAD. The windows of one SKU's campaigns never overlap (inventory refuses
    that), so at most one is live."""
    for campaign in candidates:
        if campaign.shown_at(now):
            return campaign, campaign.status_at(now)
    return None


@dataclass(frozen=True)
class CampaignView:
    """A campaign and, by SKU, the catalog's products of its items (a SKU the catalog no longer has is absent),
    with the database's clock when inventory read its figures."""

    campaign: Campaign
    products: Mapping[str, ProductRow]
    read_at: datetime


@dataclass(frozen=True)
class CampaignPage:
    """One page of the admin's listing, and the number of all matches."""

    views: list[CampaignView]
    total: int
    read_at: datetime


# Compared and hashed by identity, as kept answers are.
@dataclass(frozen=True, eq=False)
class ShownCampaigns:
    """The campaigns live or starting within SHOWN_AHEAD when inventory was asked, soonest start first."""

    views: tuple[CampaignView, ...]


def campaign_id_of(raw: str) -> str | None:
    """The canonical form of a campaign id, or None when `raw` is no UUID (no campaign can have it)."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


def _not_found(campaign_id: str) -> ServiceError:
    return refuse("CAMPAIGN_NOT_FOUND", f"no campaign {campaign_id!r}", {"campaignId": campaign_id})


def _listed(row: ProductRow) -> bool:
    return row.listed


def check_items(items: list[inventory_pb2.NewCampaignItem], products: Mapping[str, ProductRow]) -> None:
    """The checks that are the catalog's, in the items' order (the first broken one is the answer): each SKU a
    listed product (PRODUCT_NOT_FOUND), each sale price 1..(regular price - 1) (INVALID_ARGUMENT naming
    `items[i].salePrice`)."""
    for i, item in enumerate(items):
        row = products.get(item.sku)
        if row is None or not _listed(row):
            raise refuse("PRODUCT_NOT_FOUND", f"no product {item.sku!r}", {"sku": item.sku})
        if not 1 <= item.sale_price <= row.price - 1:
            raise invalid_argument(f"items[{i}].salePrice",
                                   f"salePrice of {item.sku} must be within 1..{row.price - 1} (below its price {row.price})")


def check_shape(name: str, items: list[inventory_pb2.NewCampaignItem]) -> None:
    """No NUL in the name (Postgres cannot store it), 1..MAX_ITEMS items, each naming a SKU, none twice
    (INVALID_ARGUMENT naming the field). The name's length is inventory's to check."""
    if "\x00" in name:
        raise invalid_argument("name", "name must not contain NUL characters")
    if not 1 <= len(items) <= MAX_ITEMS:
        raise invalid_argument("items", f"a campaign has 1..{MAX_ITEMS} items")
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not item.sku:
            raise invalid_argument(f"items[{i}].sku", "sku is required")
        if item.sku in seen:
            raise invalid_argument(f"items[{i}].sku", f"{item.sku} is named twice")
        seen.add(item.sku)


# Asks for the campaigns of a batch of SKUs live now or starting within SHOWN_AHEAD, by SKU, soonest first.
CampaignLookup = Callable[[list[str]], Awaitable[dict[str, tuple[Campaign, ...]]]]


class Campaigns:
    """The campaigns' rules: create and cancel through inventory after the catalog's checks, the admin's figures
    (never kept), and what a storefront is shown (kept `cache_seconds` like product pages, concurrent misses of one
    key sharing one load)."""

    def __init__(self, pool: AsyncConnectionPool, inventory: CampaignInventory, *, clock: ServerClock | None = None,
                 cache_seconds: float = 0.0, cache_entries: int = 1000, timer: Timer = time.monotonic):
        self._pool = pool
        self._inventory = inventory
        self.clock = clock or ServerClock()
        self._shown: AnswerCache[str, ShownCampaigns] = AnswerCache(cache_seconds, 1, timer)
        self._public: AnswerCache[str, CampaignView | None] = AnswerCache(cache_seconds, cache_entries, timer)

    async def _products(self, skus: list[str]) -> dict[str, ProductRow]:
        # A SKU with a NUL no product can have, and Postgres refuses it in a query: it is simply not found.
        askable = [sku for sku in dict.fromkeys(skus) if "\x00" not in sku]
        if not askable:
            return {}
        async with self._pool.connection() as conn:
            # Unlisted ones too: a campaign's report names its products whatever became of them since; a new
            # campaign refuses an unlisted one (check_items).
            return {r.sku: r for r in await repository.get_products(conn, askable, unlisted=True)}

    async def _views(self, campaigns: list[Campaign], read_at: datetime) -> list[CampaignView]:
        products = await self._products([i.sku for c in campaigns for i in c.items])
        return [CampaignView(c, {i.sku: products[i.sku] for i in c.items if i.sku in products}, read_at)
                for c in campaigns]

    # --- the admin's routes ----------------------------------------------------------------------------------------

    async def create(self, request: inventory_pb2.CreateCampaignRequest, key: str, user: str) -> CampaignView:
        """Checks the items against the catalog's products, then has inventory create the campaign and set its
        quotas aside (its refusals pass through as they are). With `key`, a resent call takes effect once."""
        items = list(request.items)
        check_shape(request.name, items)
        products = await self._products([i.sku for i in items])
        check_items(items, products)
        ask = inventory_pb2.CreateCampaignRequest()
        ask.CopyFrom(request)
        ask.idempotency_key = key
        try:
            created = await self._inventory.create_campaign(ask, user=user or None)
        except ServiceError as err:
            if err.reason == "SKU_NOT_FOUND":
                # A listed product that never had stock: no unit of it is available for a quota.
                sku = err.metadata.get("sku", "")
                raise refuse("OUT_OF_STOCK", f"{sku} has no stock",
                             {"sku": sku, "available": 0, "skus": err.metadata.get("skus", sku)}) from err
            raise
        campaign = Campaign.of(created)
        read_at = _utc(created.server_time)
        self.clock.observe(read_at)
        return CampaignView(campaign, {i.sku: products[i.sku] for i in campaign.items if i.sku in products}, read_at)

    async def cancel(self, raw_id: str, key: str, user: str) -> CampaignView:
        """Cancels a scheduled campaign or ends a live one now (CAMPAIGN_NOT_FOUND for an unknown one)."""
        campaign_id = campaign_id_of(raw_id)
        if campaign_id is None:
            raise _not_found(raw_id)
        answer = await self._inventory.cancel_campaign(campaign_id, key, user=user or None)
        read_at = _utc(answer.server_time)
        self.clock.observe(read_at)
        return (await self._views([Campaign.of(answer)], read_at))[0]

    async def get(self, raw_id: str) -> CampaignView:
        """One campaign with its figures now (CAMPAIGN_NOT_FOUND for an unknown one)."""
        view = await self._read_one(raw_id)
        if view is None:
            raise _not_found(raw_id)
        return view

    async def _read_one(self, raw_id: str) -> CampaignView | None:
        campaign_id = campaign_id_of(raw_id)
        if campaign_id is None:
            return None
        answer = await self._inventory.campaigns([campaign_id])
        read_at = _utc(answer.server_time)
        self.clock.observe(read_at)
        if not answer.campaigns:
            return None
        return (await self._views([Campaign.of(answer.campaigns[0])], read_at))[0]

    async def list_page(self, status: str, page: int | None, limit: int | None) -> tuple[CampaignPage, int, int]:
        """A page of campaigns (of `status` now, or any when empty) with their figures, soonest start first; and
        the page and page size it was read with."""
        if status not in ("", *STATUSES):
            raise invalid_argument("status", f"status must be one of {', '.join(STATUSES)}")
        page, limit = page_and_limit(page, limit)
        answer = await self._inventory.list_campaigns(inventory_pb2.ListCampaignsRequest(
            status=status or None, page=page, limit=limit))
        read_at = _utc(answer.server_time)
        self.clock.observe(read_at)
        views = await self._views([Campaign.of(c) for c in answer.campaigns], read_at)
        return CampaignPage(views, answer.total, read_at), page, limit

    # --- what a storefront is shown ---------------------------------------------------------------------------------

    async def _shown_now(self, skus: list[str]) -> list[Campaign]:
        """Every campaign (of `skus`, or of any SKU when empty) live or starting within SHOWN_AHEAD, soonest
        first, page after page."""
        found: list[Campaign] = []
        for page in range(1, MAX_PAGES + 1):
            answer = await self._inventory.list_campaigns(inventory_pb2.ListCampaignsRequest(
                skus=skus, starting_within_seconds=int(SHOWN_AHEAD.total_seconds()), page=page,
                limit=INVENTORY_PAGE))
            self.clock.observe(_utc(answer.server_time))
            found += [Campaign.of(c) for c in answer.campaigns]
            if len(answer.campaigns) < INVENTORY_PAGE or page * INVENTORY_PAGE >= answer.total:
                break
        # Inventory answers only these; a cancelled or ended one is left out here too, whatever it answers.
        return [c for c in found if c.status in SHOWN]

    async def for_skus(self, skus: list[str]) -> dict[str, tuple[Campaign, ...]]:
        """The campaigns of each SKU live now or starting within SHOWN_AHEAD, soonest first (a CampaignLookup:
        the catalog asks it beside availability for the SKUs of a page it loads)."""
        if not skus:
            return {}
        by_sku: dict[str, list[Campaign]] = {}
        wanted = set(skus)
        for campaign in await self._shown_now(list(dict.fromkeys(skus))):
            for item in campaign.items:
                if item.sku in wanted:
                    by_sku.setdefault(item.sku, []).append(campaign)
        return {sku: tuple(found) for sku, found in by_sku.items()}

    async def shown(self) -> tuple[list[tuple[CampaignView, str]], datetime]:
        """GET /campaigns: the campaigns live now or starting within SHOWN_AHEAD, soonest first, each with its
        status now; and now, by the database's clock. From the kept answer when there is one."""
        kept = (await self._shown.get("shown", self._load_shown)).value
        now = self.clock.now()
        return [(v, v.campaign.status_at(now)) for v in kept.views if v.campaign.shown_at(now)], now

    async def _load_shown(self) -> ShownCampaigns:
        campaigns = await self._shown_now([])
        return ShownCampaigns(tuple(await self._views(campaigns, self.clock.now())))

    async def public(self, raw_id: str) -> tuple[CampaignView, str, datetime]:
        """GET /campaigns/{id}: the campaign with its status now and now (the database's clock); CAMPAIGN_NOT_FOUND
        for an unknown or cancelled one, or one that ended over PUBLIC_AFTER_END ago. From the kept answer when
        there is one; an unknown id's answer is kept too, so a crowd on a bad link costs one read a period."""
        campaign_id = campaign_id_of(raw_id)
        if campaign_id is None:
            raise _not_found(raw_id)
        view = (await self._public.get(campaign_id, lambda: self._read_one(campaign_id))).value
        now = self.clock.now()
        if view is None or not view.campaign.public_at(now):
            raise _not_found(raw_id)
        return view, view.campaign.status_at(now), now


async def gather_both(first: Awaitable, second: Awaitable) -> tuple:
    """Both answers, asked at once; when either fails the other is cancelled and the failure raised."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        return tuple(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
