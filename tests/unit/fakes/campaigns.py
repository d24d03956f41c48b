"""Inventory's campaigns in memory, as InventoryClient's campaign calls show them (messages in and out)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

from shop.inventory.v1 import inventory_pb2
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.reasons import refuse

S, L, E, C = inventory_pb2.SCHEDULED, inventory_pb2.LIVE, inventory_pb2.ENDED, inventory_pb2.CANCELLED


class DbClock:
    """The database's clock of a test: `wall` (this machine's) plus `ahead` seconds."""

    def __init__(self, wall: float = 1_800_000_000.0, ahead: float = 5.0):
        self.wall = wall
        self.ahead = ahead

    def machine(self) -> float:
        """This machine's clock (ServerClock's `wall`)."""
        return self.wall

    def db(self) -> datetime:
        """The database's clock now."""
        return datetime.fromtimestamp(self.wall + self.ahead, tz=timezone.utc)

    def advance(self, seconds: float) -> None:
        self.wall += seconds


def _ts(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


class FakeCampaignInventory:
    """Campaigns with inventory's rules that the catalog relays (window, overlap, stock), its statuses by the
    DbClock, idempotency keys whose first answer is replayed, and the calls it was asked, in order."""

    def __init__(self, clock: DbClock, stock: dict[str, int]):
        self.clock = clock
        self.stock = dict(stock)
        self.stored: dict[str, inventory_pb2.Campaign] = {}
        self.answers: dict[str, inventory_pb2.Campaign] = {}
        self.calls: list[tuple[str, object]] = []
        # Set to fail every call with this error (inventory down).
        self.failure: ServiceError | None = None
        # Cleared to hold list_campaigns until set.
        self.listing_open = asyncio.Event()
        self.listing_open.set()

    def _status(self, c: inventory_pb2.Campaign) -> int:
        if c.HasField("cancelled_at") and c.cancelled_at.ToDatetime(tzinfo=timezone.utc) < \
                c.starts_at.ToDatetime(tzinfo=timezone.utc):
            return C
        now = self.clock.db()
        if now >= c.ends_at.ToDatetime(tzinfo=timezone.utc):
            return E
        return L if now >= c.starts_at.ToDatetime(tzinfo=timezone.utc) else S

    def _answer(self, c: inventory_pb2.Campaign) -> inventory_pb2.Campaign:
        out = inventory_pb2.Campaign()
        out.CopyFrom(c)
        out.status = self._status(c)
        out.server_time.CopyFrom(_ts(self.clock.db()))
        return out

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def set_aside(self, sku: str) -> int:
        return sum(i.remaining for c in self.stored.values() if self._status(c) in (S, L) for i in c.items
                   if i.sku == sku)

    def available(self, sku: str) -> int:
        return self.stock.get(sku, 0) - self.set_aside(sku)

    async def create_campaign(self, request: inventory_pb2.CreateCampaignRequest, *,
                              user: str | None = None) -> inventory_pb2.Campaign:
        self.calls.append(("create", request))
        self._check()
        if request.idempotency_key and request.idempotency_key in self.answers:
            return self._answer(self.answers[request.idempotency_key])
        if not request.HasField("ends_at"):
            raise invalid_argument("endsAt", "endsAt is required")
        starts, ends = (request.starts_at.ToDatetime(tzinfo=timezone.utc),
                        request.ends_at.ToDatetime(tzinfo=timezone.utc))
        if ends <= starts:
            raise invalid_argument("endsAt", "endsAt must be after startsAt")
        for i, item in enumerate(request.items):
            if item.quota < 1:
                raise invalid_argument(f"items[{i}].quota", "quota must be 1 or more")
            if item.sku not in self.stock:
                raise refuse("SKU_NOT_FOUND", f"no stock of {item.sku}", {"sku": item.sku})
            for other in self.stored.values():
                if self._status(other) in (S, L) and any(o.sku == item.sku for o in other.items) and \
                        other.starts_at.ToDatetime(tzinfo=timezone.utc) < ends and \
                        starts < other.ends_at.ToDatetime(tzinfo=timezone.utc):
                    raise refuse("CAMPAIGN_OVERLAP", "overlap", {"sku": item.sku, "campaignId": other.campaign_id})
            if item.quota > self.available(item.sku):
                raise refuse("OUT_OF_STOCK", "short", {"sku": item.sku, "available": self.available(item.sku),
                                                       "skus": item.sku})
        c = inventory_pb2.Campaign(
            campaign_id=str(uuid.uuid4()), name=request.name, starts_at=request.starts_at, ends_at=request.ends_at,
            created_at=_ts(self.clock.db()), created_by=user or "",
            items=[inventory_pb2.CampaignItem(sku=i.sku, sale_price=i.sale_price, quota=i.quota,
                                              max_per_user=i.max_per_user, remaining=i.quota)
                   for i in request.items])
        self.stored[c.campaign_id] = c
        if request.idempotency_key:
            self.answers[request.idempotency_key] = c
        return self._answer(c)

    async def cancel_campaign(self, campaign_id: str, key: str, *, user: str | None = None) -> inventory_pb2.Campaign:
        self.calls.append(("cancel", campaign_id))
        self._check()
        c = self.stored.get(campaign_id)
        if c is None:
            raise refuse("CAMPAIGN_NOT_FOUND", "no campaign", {"campaignId": campaign_id})
        if self._status(c) in (S, L):
            now = _ts(self.clock.db())
            c.cancelled_at.CopyFrom(now)
            if self._status(c) != C:
                c.ends_at.CopyFrom(now)
            for item in c.items:
                item.returned += item.remaining
                item.remaining = 0
        return self._answer(c)

    async def campaigns(self, campaign_ids: list[str]) -> inventory_pb2.GetCampaignsResponse:
        self.calls.append(("get", list(campaign_ids)))
        self._check()
        return inventory_pb2.GetCampaignsResponse(
            campaigns=[self._answer(self.stored[i]) for i in campaign_ids if i in self.stored],
            server_time=_ts(self.clock.db()))

    async def list_campaigns(self, request: inventory_pb2.ListCampaignsRequest) -> inventory_pb2.ListCampaignsResponse:
        self.calls.append(("list", request))
        await self.listing_open.wait()
        self._check()
        now = self.clock.db()
        found = []
        for c in sorted(self.stored.values(), key=lambda c: (c.starts_at.ToDatetime(), c.campaign_id)):
            status = self._status(c)
            if request.skus and not {i.sku for i in c.items} & set(request.skus):
                continue
            if request.starting_within_seconds > 0:
                if status not in (S, L) or c.starts_at.ToDatetime(tzinfo=timezone.utc) > \
                        now + timedelta(seconds=request.starting_within_seconds):
                    continue
            elif request.status and status != request.status:
                continue
            found.append(self._answer(c))
        page, limit = request.page or 1, request.limit or 100
        return inventory_pb2.ListCampaignsResponse(campaigns=found[(page - 1) * limit:page * limit], total=len(found),
                                                   server_time=_ts(now))
