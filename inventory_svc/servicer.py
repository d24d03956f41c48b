"""The inventory's gRPC face: messages in, calls to the service layer, messages out."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import grpc
from google.protobuf import timestamp_pb2

from inventory_svc.campaigns import CANCELLED, ENDED, LIVE, SCHEDULED, CampaignView, NewItem
from inventory_svc.client import MAX_CHANGES, REPLAYED_METADATA
from inventory_svc.model import ACTIVE, COMMITTED, EXPIRED, RELEASED, HoldRecord, StockRow
from inventory_svc.service import Inventory, Line
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.calls import CALLER_METADATA, IDEMPOTENCY_METADATA, asserted_user, metadata_value
from shop_runtime.callers import peer_identity

_STATES = {
    ACTIVE: inventory_pb2.HOLD_STATE_ACTIVE,
    COMMITTED: inventory_pb2.HOLD_STATE_COMMITTED,
    RELEASED: inventory_pb2.HOLD_STATE_RELEASED,
    EXPIRED: inventory_pb2.HOLD_STATE_EXPIRED,
}

_CAMPAIGN_STATUSES = {
    SCHEDULED: inventory_pb2.SCHEDULED,
    LIVE: inventory_pb2.LIVE,
    ENDED: inventory_pb2.ENDED,
    CANCELLED: inventory_pb2.CANCELLED,
}
_STATUS_NAMES = {number: name for name, number in _CAMPAIGN_STATUSES.items()}


def timestamp(at: datetime) -> timestamp_pb2.Timestamp:
    """An instant as a message."""
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(at)
    return message


def instant(message: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A message's instant, in UTC; INVALID_ARGUMENT naming `field` for one no calendar date can hold."""
    try:
        return message.ToDatetime(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise invalid_argument(field, f"{field} is not a valid instant") from None


def actor_of(context: grpc.aio.ServicerContext) -> str:
    """Who caused a change, for the ledger: the end user the gateway named, else the caller (its certificate's
    identity over TLS, else what it calls itself)."""
    return (asserted_user(context) or peer_identity(context) or metadata_value(context, CALLER_METADATA)
            or "unknown")


def key_of(request_key: str, context: grpc.aio.ServicerContext) -> str:
    """The idempotency key: the request's field, else the `idempotency-key` metadata."""
    return request_key or metadata_value(context, IDEMPOTENCY_METADATA)


def hold_pb(hold: HoldRecord) -> inventory_pb2.Hold:
    """A hold as a message."""
    expires = timestamp_pb2.Timestamp()
    expires.FromDatetime(hold.expires_at)
    return inventory_pb2.Hold(hold_id=hold.id, owner=hold.owner, sku=hold.sku, qty=hold.qty,
                              state=_STATES[hold.state], expires_at=expires, order_id=hold.order_id or "",
                              price=hold.price, campaign_id=hold.campaign_id or "")


def answered(context: grpc.aio.ServicerContext, holds: list[HoldRecord]) -> list[inventory_pb2.Hold]:
    """The holds of a write's answer as messages; a replayed answer says so in its trailing metadata."""
    if any(h.replayed for h in holds):
        context.set_trailing_metadata(((REPLAYED_METADATA, "true"),))
    return [hold_pb(h) for h in holds]


def stock_pb(row: StockRow) -> inventory_pb2.StockLevel:
    """Stock figures as a message."""
    return inventory_pb2.StockLevel(sku=row.sku, on_hand=row.on_hand, reserved=row.reserved, available=row.available,
                                    set_aside=row.set_aside)


def campaign_pb(view: CampaignView) -> inventory_pb2.Campaign:
    """A campaign and its figures as a message."""
    message = inventory_pb2.Campaign(
        campaign_id=view.id, name=view.name, status=_CAMPAIGN_STATUSES[view.status],
        starts_at=timestamp(view.starts_at), ends_at=timestamp(view.ends_at), server_time=timestamp(view.server_time),
        created_at=timestamp(view.created_at), created_by=view.created_by,
        items=[inventory_pb2.CampaignItem(
            sku=i.sku, sale_price=i.sale_price, quota=i.quota, max_per_user=i.max_per_user, held=i.held, sold=i.sold,
            remaining=i.remaining, returned=i.returned, revenue=i.revenue, buyers=i.buyers, refused=i.refused)
            for i in view.items])
    if view.cancelled_at is not None:
        message.cancelled_at.CopyFrom(timestamp(view.cancelled_at))
    return message


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    """Serves shop.inventory.v1.InventoryService; domain errors become statuses in the shared interceptor."""

    def __init__(self, inventory: Inventory):
        self._inventory = inventory

    async def _create(self, request: inventory_pb2.CreateHoldsRequest, key: str, actor: str) -> list[HoldRecord]:
        return await self._inventory.create_holds(
            request.owner, [Line(line.sku, line.qty, line.price, line.expected_price) for line in request.lines],
            request.ttl_seconds,
            key=key, actor=actor, buyer=request.buyer, max_units_per_buyer=request.max_units_per_buyer)

    async def _resize(self, request: inventory_pb2.ResizeHoldRequest, key: str, actor: str) -> list[HoldRecord]:
        return [await self._inventory.resize_hold(
            request.hold_id, request.qty, request.ttl_seconds, key=key, actor=actor, owner=request.owner,
            add=request.add_qty, max_qty=request.max_qty, max_units_per_buyer=request.max_units_per_buyer,
            expected_price=request.expected_price, price=request.price)]

    async def _release(self, request: inventory_pb2.ReleaseHoldsRequest, key: str, actor: str) -> list[HoldRecord]:
        return await self._inventory.release_holds(list(request.hold_ids), key=key, actor=actor,
                                                   owner=request.owner)

    async def CreateHolds(self, request, context):
        holds = await self._create(request, key_of(request.idempotency_key, context), actor_of(context))
        return inventory_pb2.CreateHoldsResponse(holds=answered(context, holds))

    async def ResizeHold(self, request, context):
        (message,) = answered(context, await self._resize(request, key_of(request.idempotency_key, context),
                                                          actor_of(context)))
        return inventory_pb2.ResizeHoldResponse(hold=message)

    async def ReleaseHolds(self, request, context):
        holds = await self._release(request, key_of(request.idempotency_key, context), actor_of(context))
        return inventory_pb2.ReleaseHoldsResponse(holds=answered(context, holds))

    async def ChangeHolds(self, request, context):
        if not 1 <= len(request.changes) <= MAX_CHANGES:
            raise invalid_argument("changes", f"1..{MAX_CHANGES} changes per call")
        caller = metadata_value(context, CALLER_METADATA) or "unknown"

        async def one(change: inventory_pb2.HoldChange) -> inventory_pb2.HoldChangeResult:
            kind = change.WhichOneof("change")
            if kind is None:
                return inventory_pb2.HoldChangeResult(status=invalid_argument("change", "a change is required")
                                                      .to_status_message())
            # Any: each takes the request message of its own kind, the one `kind` names.
            kinds: dict[str, Callable[[Any, str, str], Awaitable[list[HoldRecord]]]] = {
                "create": self._create, "resize": self._resize, "release": self._release}
            do = kinds[kind]
            inner = getattr(change, kind)
            try:
                holds = await do(inner, inner.idempotency_key, change.user or caller)
            except ServiceError as err:
                return inventory_pb2.HoldChangeResult(status=err.to_status_message())
            return inventory_pb2.HoldChangeResult(holds=[hold_pb(h) for h in holds],
                                                  replayed=any(h.replayed for h in holds))

        # At once: changes of one SKU join one transaction, as separate calls arriving together would.
        results = await asyncio.gather(*(one(c) for c in request.changes))
        return inventory_pb2.ChangeHoldsResponse(results=results)

    async def ExtendHolds(self, request, context):
        holds = await self._inventory.extend_holds(
            list(request.hold_ids), request.owner, request.order_id, request.ttl_seconds,
            key=key_of(request.idempotency_key, context), actor=actor_of(context), from_owner=request.from_owner,
            max_units_per_buyer=request.max_units_per_buyer)
        return inventory_pb2.ExtendHoldsResponse(holds=answered(context, holds))

    async def CommitHolds(self, request, context):
        holds = await self._inventory.commit_holds(
            list(request.hold_ids), key=key_of(request.idempotency_key, context), actor=actor_of(context),
            owner=request.owner)
        return inventory_pb2.CommitHoldsResponse(holds=answered(context, holds))

    async def GetHolds(self, request, context):
        holds = await self._inventory.get_holds(list(request.hold_ids))
        return inventory_pb2.GetHoldsResponse(holds=[hold_pb(h) for h in holds])

    async def ListHolds(self, request, context):
        holds = await self._inventory.active_holds(request.owner_prefix, request.min_age_seconds,
                                                   request.after_hold_id, request.limit)
        return inventory_pb2.ListHoldsResponse(holds=[hold_pb(h) for h in holds])

    async def GetAvailability(self, request, context):
        rows = await self._inventory.availability(list(request.skus))
        return inventory_pb2.GetAvailabilityResponse(items=[stock_pb(r) for r in rows])

    async def SetStock(self, request, context):
        if not request.HasField("on_hand"):
            raise invalid_argument("onHand", "onHand is required")
        row = await self._inventory.set_stock(request.sku, request.on_hand, key=key_of("", context),
                                              actor=actor_of(context))
        return stock_pb(row)

    async def GetStock(self, request, context):
        return stock_pb(await self._inventory.get_stock(request.sku))

    async def AdjustStock(self, request, context):
        known = request.reason in inventory_pb2.AdjustmentReason.values() and request.reason
        reason = inventory_pb2.AdjustmentReason.Name(request.reason) if known else ""
        row = await self._inventory.adjust_stock(request.sku, request.delta, reason, key=key_of("", context),
                                                 actor=actor_of(context))
        return stock_pb(row)

    async def CreateCampaign(self, request, context):
        view = await self._inventory.campaigns.create(
            request.name, instant(request.starts_at, "startsAt") if request.HasField("starts_at") else None,
            instant(request.ends_at, "endsAt") if request.HasField("ends_at") else None,
            [NewItem(i.sku, i.sale_price, i.quota, i.max_per_user) for i in request.items],
            key=key_of(request.idempotency_key, context), actor=actor_of(context))
        if view.replayed:
            context.set_trailing_metadata(((REPLAYED_METADATA, "true"),))
        return campaign_pb(view)

    async def CancelCampaign(self, request, context):
        view = await self._inventory.campaigns.cancel(request.campaign_id, key=key_of(request.idempotency_key, context),
                                                      actor=actor_of(context))
        if view.replayed:
            context.set_trailing_metadata(((REPLAYED_METADATA, "true"),))
        return campaign_pb(view)

    async def GetCampaigns(self, request, context):
        views, now = await self._inventory.campaigns.get(list(request.campaign_ids))
        return inventory_pb2.GetCampaignsResponse(campaigns=[campaign_pb(v) for v in views], server_time=timestamp(now))

    async def ListCampaigns(self, request, context):
        if request.status and request.status not in _STATUS_NAMES:
            raise invalid_argument("status", "status must be one of " + ", ".join(_CAMPAIGN_STATUSES))
        views, total, now = await self._inventory.campaigns.list(
            status=_STATUS_NAMES.get(request.status), skus=list(request.skus),
            starting_within=request.starting_within_seconds, page=request.page, limit=request.limit)
        return inventory_pb2.ListCampaignsResponse(campaigns=[campaign_pb(v) for v in views], total=total,
                                                   server_time=timestamp(now))
