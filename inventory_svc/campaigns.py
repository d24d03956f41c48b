"""Flash-sale campaigns: their rules, their SQL, and their creation and cancellation under the SKUs' locks.

A campaign's quota is stock: set aside when the campaign is created (stock.set_aside grows, so `available` at the
regular price shrinks), held from while it is live (inventory_svc.model.StockTake), and what is left goes back to
regular stock at the instant it ends or is cancelled (inventory_svc.repository.close_ended_items). The database's
clock decides every status.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from inventory_svc import repository as repo
from inventory_svc.answers import IDEMPOTENCY_TABLE
from inventory_svc.model import out_of_stock, sku_not_found
from inventory_svc.validation import MAX_BATCH, check_text
from shop_runtime import idempotency
from shop_runtime.clock import Clock
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.reasons import refuse

SCHEDULED, LIVE, ENDED, CANCELLED = "SCHEDULED", "LIVE", "ENDED", "CANCELLED"
STATUSES = (SCHEDULED, LIVE, ENDED, CANCELLED)

MAX_NAME = 200
MAX_WINDOW = timedelta(days=7)
MAX_ITEMS = 100
MAX_PRICE = 2_000_000_000
MAX_QUOTA = 1_000_000
# quota x sale_price, the most an item's revenue can be: an int32, so a JSON number wherever it is shown.
MAX_REVENUE = 2_147_483_647
MAX_IDS = 100
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class NewItem:
    """One SKU of a campaign to create."""

    sku: str
    sale_price: int
    quota: int
    max_per_user: int = 0


@dataclass(frozen=True)
class ItemFigures:
    """One SKU of a campaign with its figures as of the instant they were read."""

    sku: str
    sale_price: int
    quota: int
    max_per_user: int
    held: int
    sold: int
    remaining: int
    returned: int
    buyers: int
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def revenue(self) -> int:
        """Units sold at the sale price."""
        return self.sold * self.sale_price


@dataclass(frozen=True)
class CampaignView:
    """A campaign as of `server_time` (the database's clock), its items in the order they were given."""

    id: str
    name: str
    status: str
    starts_at: datetime
    ends_at: datetime
    cancelled_at: datetime | None
    created_at: datetime
    created_by: str
    server_time: datetime
    items: list[ItemFigures]
    # True when answered from the stored answer of an earlier call with the same idempotency key.
    replayed: bool = False


def status_at(starts_at: datetime, ends_at: datetime, cancelled_at: datetime | None, now: datetime) -> str:
    """A campaign's status at `now`: CANCELLED if cancelled before it started, else by its window (a live campaign
    cancelled ended at that instant: its ends_at)."""
    if cancelled_at is not None and cancelled_at <= starts_at:
        return CANCELLED
    if now < starts_at:
        return SCHEDULED
    return LIVE if now < ends_at else ENDED


# The same rule in SQL, over inventory.campaigns c and the parameter %(now)s.
_STATUS_SQL = """CASE WHEN c.cancelled_at IS NOT NULL AND c.cancelled_at <= c.starts_at THEN 'CANCELLED'
                      WHEN %(now)s < c.starts_at THEN 'SCHEDULED'
                      WHEN %(now)s < c.ends_at THEN 'LIVE' ELSE 'ENDED' END"""


def campaign_not_found(campaign_id: str) -> ServiceError:
    """NOT_FOUND/CAMPAIGN_NOT_FOUND."""
    return refuse("CAMPAIGN_NOT_FOUND", f"no campaign {campaign_id}", {"campaignId": campaign_id})


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def check_new(name: str, starts_at: datetime | None, ends_at: datetime | None, items: list[NewItem]) -> None:
    """The rules of a new campaign that need no clock: INVALID_ARGUMENT naming the REST field of the first broken.
    `endsAt` after now is decided under the SKUs' locks, by the database's clock."""
    if not 1 <= len(name) <= MAX_NAME or "\x00" in name:
        raise invalid_argument("name", f"name must be 1..{MAX_NAME} characters, none of them NUL")
    if starts_at is None:
        raise invalid_argument("startsAt", "startsAt is required")
    if ends_at is None:
        raise invalid_argument("endsAt", "endsAt is required")
    if ends_at <= starts_at:
        raise invalid_argument("endsAt", "endsAt must be after startsAt")
    if ends_at - starts_at > MAX_WINDOW:
        raise invalid_argument("endsAt", "a campaign lasts at most 7 days")
    if not 1 <= len(items) <= MAX_ITEMS:
        raise invalid_argument("items", f"a campaign has 1..{MAX_ITEMS} items")
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"items[{i}]"
        check_text(item.sku, f"{where}.sku")
        if "\x00" in item.sku:
            raise invalid_argument(f"{where}.sku", "a SKU has no NUL character")
        if item.sku in seen:
            raise invalid_argument(f"{where}.sku", f"{item.sku} is named twice")
        seen.add(item.sku)
        if not 1 <= item.sale_price <= MAX_PRICE:
            raise invalid_argument(f"{where}.salePrice", f"salePrice must be within 1..{MAX_PRICE}")
        if not 1 <= item.quota <= MAX_QUOTA:
            raise invalid_argument(f"{where}.quota", f"quota must be within 1..{MAX_QUOTA}")
        if item.quota * item.sale_price > MAX_REVENUE:
            raise invalid_argument(f"{where}.quota", f"quota x salePrice must be at most {MAX_REVENUE}")
        if item.max_per_user < 0:
            raise invalid_argument(f"{where}.maxPerUser", "maxPerUser must be 0 (the store's limit) or more")


# --- SQL --------------------------------------------------------------------------------------------

async def overlapping(conn: AsyncConnection, skus: list[str], starts_at: datetime,
                      ends_at: datetime) -> dict[str, str]:
    """sku -> a campaign not cancelled before its start whose window overlaps [starts_at, ends_at) and has it."""
    cur = await conn.execute(
        """
        SELECT DISTINCT ON (ci.sku) ci.sku, c.id::text
          FROM inventory.campaign_items ci JOIN inventory.campaigns c ON c.id = ci.campaign_id
         WHERE ci.sku = ANY(%s) AND c.starts_at < %s AND %s < c.ends_at
           AND NOT (c.cancelled_at IS NOT NULL AND c.cancelled_at <= c.starts_at)
         ORDER BY ci.sku, c.starts_at
        """, (skus, ends_at, starts_at))
    return dict(await cur.fetchall())


async def insert_campaign(conn: AsyncConnection, campaign_id: str, name: str, starts_at: datetime,
                          ends_at: datetime, items: list[NewItem], now: datetime, actor: str) -> None:
    """Stores a campaign and its items, each with its whole quota remaining (set aside by the caller's movements)."""
    await conn.execute(
        "INSERT INTO inventory.campaigns (id, name, starts_at, ends_at, created_at, created_by)"
        " VALUES (%s, %s, %s, %s, %s, %s)", (campaign_id, name, starts_at, ends_at, now, actor))
    await conn.execute(
        "INSERT INTO inventory.campaign_items (campaign_id, sku, position, sale_price, quota, max_per_user, remaining)"
        " SELECT %s, sku, n - 1, sale_price, quota, max_per_user, quota"
        "   FROM unnest(%s::text[], %s::int[], %s::int[], %s::int[])"
        "        WITH ORDINALITY AS i(sku, sale_price, quota, max_per_user, n)",
        (campaign_id, [i.sku for i in items], [i.sale_price for i in items], [i.quota for i in items],
         [i.max_per_user for i in items]))


async def campaign_skus(conn: AsyncConnection, campaign_id: str) -> list[str]:
    """The SKUs of a campaign (they never change, so safe to read before locking them); empty if unknown."""
    cur = await conn.execute("SELECT sku FROM inventory.campaign_items WHERE campaign_id = %s", (campaign_id,))
    return [r[0] for r in await cur.fetchall()]


async def read_campaigns(conn: AsyncConnection, ids: list[str], now: datetime) -> list[CampaignView]:
    """The campaigns among `ids` (UUIDs), in that order, with their items' figures as of `now` without a lock:
    held (active, unexpired holds of the quota), sold (committed), remaining (what is set aside, with expired holds
    that come back to it; 0 once ended), returned (back in regular stock, with what an ended, not yet closed item
    will give back), buyers of sold units, refusals. Three statements, one round trip in pipeline mode."""
    if not ids:
        return []
    campaigns = await conn.execute(
        "SELECT id::text, name, starts_at, ends_at, cancelled_at, created_at, created_by"
        "  FROM inventory.campaigns WHERE id = ANY(%s::uuid[])", (ids,))
    items = await conn.execute(
        """
        SELECT ci.campaign_id::text, ci.sku, ci.sale_price, ci.quota, ci.max_per_user, ci.remaining, ci.returned,
               c.ends_at <= %(now)s OR c.cancelled_at IS NOT NULL,
               COALESCE(f.held, 0)::int, COALESCE(f.sold, 0)::int, COALESCE(f.lapsed, 0)::int, COALESCE(f.buyers, 0)::int
          FROM inventory.campaign_items ci JOIN inventory.campaigns c ON c.id = ci.campaign_id
          LEFT JOIN LATERAL (
              SELECT sum(h.qty) FILTER (WHERE h.state = 'ACTIVE' AND h.expires_at > %(now)s) AS held,
                     sum(h.qty) FILTER (WHERE h.state = 'COMMITTED') AS sold,
                     sum(h.qty) FILTER (WHERE h.state = 'ACTIVE' AND h.expires_at <= %(now)s) AS lapsed,
                     count(DISTINCT COALESCE(h.buyer, h.owner)) FILTER (WHERE h.state = 'COMMITTED') AS buyers
                FROM inventory.holds h
               WHERE h.campaign_id = ci.campaign_id AND h.sku = ci.sku AND h.state IN ('ACTIVE', 'COMMITTED')
          ) f ON true
         WHERE ci.campaign_id = ANY(%(ids)s::uuid[])
         ORDER BY ci.campaign_id, ci.position
        """, dict(ids=ids, now=now))
    refusals = await conn.execute(
        "SELECT campaign_id::text, sku, reason, refused FROM inventory.campaign_refusals"
        " WHERE campaign_id = ANY(%s::uuid[])", (ids,))
    refused: dict[tuple[str, str], dict[str, int]] = {}
    for campaign_id, sku, reason, count in await refusals.fetchall():
        refused.setdefault((campaign_id, sku), {})[reason] = count
    per_campaign: dict[str, list[ItemFigures]] = {}
    for (campaign_id, sku, sale_price, quota, max_per_user, remaining, returned, ended, held, sold, lapsed,
         buyers) in await items.fetchall():
        # Expired, unreclaimed holds go back to the quota while the campaign runs, and with it to regular stock
        # once it has ended: the figures the next write under the SKU's lock will store.
        if ended:
            remaining, returned = 0, returned + remaining + lapsed
        else:
            remaining += lapsed
        per_campaign.setdefault(campaign_id, []).append(ItemFigures(
            sku, sale_price, quota, max_per_user, held, sold, remaining, returned, buyers,
            refused.get((campaign_id, sku), {})))
    found = {}
    for campaign_id, name, starts_at, ends_at, cancelled_at, created_at, created_by in await campaigns.fetchall():
        found[campaign_id] = CampaignView(campaign_id, name, status_at(starts_at, ends_at, cancelled_at, now),
                                          starts_at, ends_at, cancelled_at, created_at, created_by, now,
                                          per_campaign.get(campaign_id, []))
    return [found[i] for i in ids if i in found]


async def list_ids(conn: AsyncConnection, now: datetime, *, status: str | None, skus: list[str],
                   starting_within: int, limit: int, offset: int) -> tuple[list[str], int]:
    """A page of the ids of the campaigns that match, soonest start first then by id, and how many match in all.
    With `starting_within` > 0: live now or starting within that many seconds, not cancelled (status ignored)."""
    where = ["(cardinality(%(skus)s::text[]) = 0 OR EXISTS (SELECT 1 FROM inventory.campaign_items ci"
             " WHERE ci.campaign_id = c.id AND ci.sku = ANY(%(skus)s)))"]
    if starting_within > 0:
        where.append("c.ends_at > %(now)s AND c.starts_at <= %(now)s + make_interval(secs => %(within)s)"
                     " AND NOT (c.cancelled_at IS NOT NULL AND c.cancelled_at <= c.starts_at)")
    elif status is not None:
        where.append(f"({_STATUS_SQL}) = %(status)s")
    condition = " AND ".join(where)
    params = dict(now=now, skus=skus, within=starting_within, status=status, limit=limit, offset=offset)
    total = await conn.execute(f"SELECT count(*)::int FROM inventory.campaigns c WHERE {condition}", params)
    page = await conn.execute(f"SELECT c.id::text FROM inventory.campaigns c WHERE {condition}"
                              " ORDER BY c.starts_at, c.id LIMIT %(limit)s OFFSET %(offset)s", params)
    row = await total.fetchone()
    # An aggregate without GROUP BY: always exactly one row.
    assert row is not None
    return [r[0] for r in await page.fetchall()], row[0]


# --- the service layer --------------------------------------------------------------------------------

class Campaigns:
    """Creates, cancels and reads campaigns; every decision by the database's clock, every stock change under the
    SKUs' locks and in the ledger."""

    def __init__(self, pool: AsyncConnectionPool, clock: Clock):
        self._pool = pool
        self._clock = clock

    async def _replay(self, conn: AsyncConnection, stored: bytes) -> CampaignView:
        """The campaign an earlier call with the same key made or cancelled, as it is now."""
        campaign_id = json.loads(stored)["campaign_id"]
        (view,) = await read_campaigns(conn, [campaign_id], await self._clock.db_now(conn))
        return CampaignView(**{**view.__dict__, "replayed": True})

    async def create(self, name: str, starts_at: datetime | None, ends_at: datetime | None, items: list[NewItem], *,
                     key: str = "", actor: str) -> CampaignView:
        """Creates a campaign and sets its quotas aside, all or nothing, under its SKUs' locks (see the RPC)."""
        check_new(name, starts_at, ends_at, items)
        assert starts_at is not None and ends_at is not None  # check_new refuses a missing one
        key = idempotency.check_key(key)
        skus = [i.sku for i in items]
        fingerprint = idempotency.fingerprint("create_campaign", name, starts_at.isoformat(), ends_at.isoformat(),
                                              [i.__dict__ for i in items])
        async with self._pool.connection() as conn, conn.pipeline():
            async with conn.transaction():
                if key and (stored := await idempotency.claim(conn, IDEMPOTENCY_TABLE, "create_campaign", key,
                                                              fingerprint)) is not None:
                    return await self._replay(conn, stored)
                await repo.lock_skus(conn, skus)
                now = await self._clock.db_now(conn)
                await repo.settle(conn, skus, now, actor)
                if ends_at <= now:
                    raise invalid_argument("endsAt", "endsAt must be after now")
                rows = await repo.stock_rows(conn, skus)
                if missing := [s for s in skus if s not in rows]:
                    raise sku_not_found(missing)
                taken = await overlapping(conn, skus, starts_at, ends_at)
                if clash := next((s for s in skus if s in taken), None):
                    raise refuse("CAMPAIGN_OVERLAP", f"{clash} is in campaign {taken[clash]}, whose window overlaps",
                                 {"sku": clash, "campaignId": taken[clash]})
                if short := {i.sku: rows[i.sku].available for i in items if i.quota > rows[i.sku].available}:
                    raise out_of_stock(short)
                campaign_id = str(uuid.uuid4())
                await insert_campaign(conn, campaign_id, name, starts_at, ends_at, items, now, actor)
                for item in items:
                    await repo.move(conn, sku=item.sku, reason="SET_ASIDE", on_hand_delta=0, reserved_delta=0,
                                    set_aside_delta=item.quota, actor=actor, now=now, campaign_id=campaign_id)
                if key:
                    await idempotency.record(conn, IDEMPOTENCY_TABLE, "create_campaign", key,
                                             json.dumps({"campaign_id": campaign_id}).encode())
                (view,) = await read_campaigns(conn, [campaign_id], now)
                return view

    async def cancel(self, campaign_id: str, *, key: str = "", actor: str) -> CampaignView:
        """Cancels a scheduled campaign (CANCELLED, its whole quota back) or ends a live one now (what is left of
        its quota back); a campaign cancelled or ended is answered as it is."""
        if not is_uuid(campaign_id):
            raise campaign_not_found(campaign_id)
        key = idempotency.check_key(key)
        async with self._pool.connection() as conn, conn.pipeline():
            async with conn.transaction():
                if key and (stored := await idempotency.claim(
                        conn, IDEMPOTENCY_TABLE, "cancel_campaign", key,
                        idempotency.fingerprint("cancel_campaign", campaign_id))) is not None:
                    return await self._replay(conn, stored)
                skus = await campaign_skus(conn, campaign_id)
                if not skus:
                    raise campaign_not_found(campaign_id)
                await repo.lock_skus(conn, skus)
                now = await self._clock.db_now(conn)
                cur = await conn.execute(
                    "SELECT starts_at, ends_at, cancelled_at FROM inventory.campaigns WHERE id = %s FOR UPDATE",
                    (campaign_id,))
                row = await cur.fetchone()
                assert row is not None  # it has items, and a campaign is never deleted
                starts_at, ends_at, cancelled_at = row
                status = status_at(starts_at, ends_at, cancelled_at, now)
                if status == SCHEDULED or (status == LIVE and now <= starts_at):
                    # Not started (or starting this very instant: nothing can have been held from it yet).
                    await conn.execute("UPDATE inventory.campaigns SET cancelled_at = %s WHERE id = %s",
                                       (now, campaign_id))
                elif status == LIVE:
                    await conn.execute("UPDATE inventory.campaigns SET ends_at = %s, cancelled_at = %s WHERE id = %s",
                                       (now, now, campaign_id))
                # Expired holds back to the quota first (those that expired before the end), then the quota back.
                await repo.settle(conn, skus, now, actor)
                if key:
                    await idempotency.record(conn, IDEMPOTENCY_TABLE, "cancel_campaign", key,
                                             json.dumps({"campaign_id": campaign_id}).encode())
                (view,) = await read_campaigns(conn, [campaign_id], now)
                return view

    async def get(self, ids: list[str]) -> tuple[list[CampaignView], datetime]:
        """The campaigns among `ids` (unknown or malformed ids left out), and the database's clock."""
        if len(ids) > MAX_IDS:
            raise invalid_argument("campaign_ids", f"at most {MAX_IDS} campaigns per call")
        wanted = list(dict.fromkeys(i for i in ids if is_uuid(i)))
        # Pipeline mode: the reads of the figures travel together (one round trip after the clock's).
        async with self._pool.connection() as conn, conn.pipeline():
            now = await self._clock.db_now(conn)
            return await read_campaigns(conn, wanted, now), now

    async def list(self, *, status: str | None, skus: list[str], starting_within: int, page: int,
                   limit: int) -> tuple[list[CampaignView], int, datetime]:
        """A page of the campaigns that match, soonest start first, how many match in all, and the clock."""
        if len(skus) > MAX_BATCH:
            raise invalid_argument("skus", f"at most {MAX_BATCH} SKUs")
        if starting_within < 0:
            raise invalid_argument("starting_within_seconds", "starting_within_seconds must be 0 or more")
        if page < 0:
            raise invalid_argument("page", "page must be 1 or more")
        if not 0 <= limit <= MAX_PAGE_SIZE:
            raise invalid_argument("limit", f"limit must be within 1..{MAX_PAGE_SIZE}")
        page, limit = page or 1, limit or MAX_PAGE_SIZE
        # Pipeline mode: the count and the page travel together, then the figures of the page together.
        async with self._pool.connection() as conn, conn.pipeline():
            now = await self._clock.db_now(conn)
            ids, total = await list_ids(conn, now, status=status, skus=list(dict.fromkeys(skus)),
                                        starting_within=starting_within, limit=limit, offset=(page - 1) * limit)
            return await read_campaigns(conn, ids, now), total, now
