"""The inventory as its callers see it: typed calls, the refusals they branch on, retries with the same key."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Awaitable, Callable

# A hold's states are its model's; re-exported for the callers, which branch on them.
from inventory_svc.model import ACTIVE as ACTIVE, COMMITTED as COMMITTED, EXPIRED as EXPIRED, RELEASED as RELEASED
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime import deadlines
from shop_runtime.clients import TRANSIENT, ServiceClient
from shop_runtime.errors import ServiceError, unavailable

# Refusals that mean a hold can no longer be changed by its caller: it ended, expired or moved on.
HOLD_GONE = frozenset({"HOLD_NOT_ACTIVE", "HOLD_NOT_OWNED", "HOLD_NOT_FOUND"})
OUT_OF_STOCK = "OUT_OF_STOCK"
QTY_LIMIT = "QTY_LIMIT"
PURCHASE_LIMIT = "PURCHASE_LIMIT"
# Trailing metadata of an answer replayed for an idempotency key already used (as Stripe's `Idempotent-Replayed`
# header), set by inventory_svc.servicer: the holds in it are as they were then, not necessarily now.
REPLAYED_METADATA = "idempotent-replayed"
# Calls of one client that go to inventory one by one at once; hold changes beyond that wait and go together in
# one ChangeHolds as soon as one of those calls is answered (so a crowd costs a few calls, not one per change).
SEPARATE_CALLS = 2
# The most changes one ChangeHolds carries (inventory's limit, which its servicer enforces).
MAX_CHANGES = 500
_TRANSIENT_CODES = frozenset(code.value[0] for code in TRANSIENT)

# The service's stub, for Deps.client.
STUB = inventory_pb2_grpc.InventoryServiceStub


@dataclass(frozen=True)
class Hold:
    """A hold as inventory reports it now."""

    hold_id: str
    owner: str
    sku: str
    qty: int
    state: str  # ACTIVE, COMMITTED, RELEASED or EXPIRED (an active hold past its expiry is EXPIRED)
    expires_at: datetime
    order_id: str
    # True when the answer was the stored one of an earlier call with the same key: the hold as it was then.
    replayed: bool = False
    # The unit price the units were held at (0: a hold made without a price), and the campaign whose quota they
    # came from ("" for regular stock).
    price: int = 0
    campaign_id: str = ""

    @classmethod
    def of(cls, m: inventory_pb2.Hold) -> "Hold":
        """The record of a message."""
        return cls(m.hold_id, m.owner, m.sku, m.qty, inventory_pb2.HoldState.Name(m.state).removeprefix("HOLD_STATE_"),
                   m.expires_at.ToDatetime(tzinfo=timezone.utc), m.order_id, price=m.price,
                   campaign_id=m.campaign_id)


def _key_of(change: inventory_pb2.HoldChange) -> str:
    return getattr(change, change.WhichOneof("change")).idempotency_key


def _holds(messages: Iterable[inventory_pb2.Hold], trailers: dict[str, str] | None = None) -> list[Hold]:
    replayed = (trailers or {}).get(REPLAYED_METADATA) == "true"
    return [replace(Hold.of(m), replayed=replayed) for m in messages]


class InventoryClient:
    """Calls inventory. Writes carry an idempotency key derived from the caller's business operation,
    so a write whose answer was lost is sent again (same request, same key) and takes effect once."""

    def __init__(self, service: ServiceClient, separate_calls: int = SEPARATE_CALLS):
        self._service = service
        self._separate = separate_calls
        self._under_way = 0
        # Changes waiting for the next ChangeHolds: the change, its caller's answer, and its caller's deadline.
        self._waiting: list[tuple[inventory_pb2.HoldChange, asyncio.Future, float | None]] = []
        self._batches: set[asyncio.Task] = set()

    async def _change(self, alone: Callable[[], Awaitable], change: inventory_pb2.HoldChange) -> list[Hold]:
        """A hold change: sent alone while fewer than `separate_calls` of this client's calls are under way, else
        queued for the next ChangeHolds, which goes as soon as one of them is answered. The change carries its own
        idempotency key either way, so a retried ChangeHolds takes effect once, change by change."""
        if self._under_way < self._separate:
            self._under_way += 1
            try:
                return await alone()
            finally:
                self._under_way -= 1
                self._send_waiting()
        answer = asyncio.get_running_loop().create_future()
        self._waiting.append((change, answer, deadlines.current()))
        return await answer

    def _send_waiting(self) -> None:
        if not self._waiting or self._under_way >= self._separate:
            return
        batch, self._waiting = self._waiting[:MAX_CHANGES], self._waiting[MAX_CHANGES:]
        self._under_way += 1
        # Outside the context of the handler that happened to free the place: the changes come from many requests;
        # the call must end within the earliest of their deadlines, as each of them would have sent it.
        ends = [d for _, _, d in batch if d is not None]
        context = contextvars.Context()
        context.run(deadlines.within, min(ends) if ends else None)
        task = asyncio.get_running_loop().create_task(self._send(batch), context=context)
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _send(self, batch: list[tuple[inventory_pb2.HoldChange, asyncio.Future, float | None]]) -> None:
        try:
            answer = await self._service.call(
                "ChangeHolds", inventory_pb2.ChangeHoldsRequest(changes=[c for c, _, _ in batch]),
                idempotent=all(_key_of(c) for c, _, _ in batch))
        except Exception as err:  # ServiceError (inventory unavailable, say): each change's caller gets it
            for _, waiter, _ in batch:
                if not waiter.done():
                    waiter.set_exception(err)
        else:
            for (_, waiter, _), result in zip(batch, answer.results, strict=True):
                if waiter.done():
                    continue
                if result.status.code in _TRANSIENT_CODES:
                    # As for a call sent alone whose retries ran out: the caller sees inventory unavailable.
                    waiter.set_exception(unavailable(self._service.service))
                elif result.status.code:
                    waiter.set_exception(ServiceError.from_status_message(result.status))
                else:
                    waiter.set_result([replace(Hold.of(m), replayed=result.replayed) for m in result.holds])
        finally:
            self._under_way -= 1
            self._send_waiting()

    async def hold(self, owner: str, lines: dict[str, int], ttl_seconds: int, key: str, *,
                   user: str | None = None, buyer: str = "", max_units: int = 0, prices: dict[str, int] | None = None,
                   expected_prices: dict[str, int] | None = None) -> list[Hold]:
        """Holds every line's units for `owner`, all or nothing; OUT_OF_STOCK when any is short; with a buyer and
        max_units, PURCHASE_LIMIT when a line would give the buyer more than that many units of its SKU.
        `prices`: each SKU's regular price as the caller read it (the price of units held from regular stock);
        `expected_prices`: the price each SKU must be held at (PRICE_CHANGED otherwise; absent or 0: any). While a
        campaign of a SKU is live, its units are held from the quota at the sale price unless the regular price is
        expected (SALE_SOLD_OUT when the quota cannot cover them)."""
        prices, expected_prices = prices or {}, expected_prices or {}
        request = inventory_pb2.CreateHoldsRequest(
            owner=owner, lines=[inventory_pb2.HoldLine(sku=s, qty=q, price=prices.get(s, 0),
                                                       expected_price=expected_prices.get(s, 0))
                                for s, q in lines.items()],
            ttl_seconds=ttl_seconds, idempotency_key=key, buyer=buyer, max_units_per_buyer=max_units)

        async def alone() -> list[Hold]:
            answer, trailers = await self._service.call("CreateHolds", request, user=user, idempotent=bool(key),
                                                        trailers=True)
            return _holds(answer.holds, trailers)

        return await self._change(alone, inventory_pb2.HoldChange(user=user or "", create=request))

    async def resize(self, hold_id: str, ttl_seconds: int, owner: str, key: str, *, qty: int = 0, add: int = 0,
                     max_qty: int = 0, user: str | None = None, max_units: int = 0, expected_price: int = 0,
                     price: int = 0) -> Hold:
        """Sets an active hold of `owner` to `qty` units, or grows it by `add`, until now + ttl, never above
        max_qty (QTY_LIMIT) nor taking its buyer past max_units (PURCHASE_LIMIT); HOLD_GONE reasons when the hold
        is no longer the owner's active hold. The hold keeps its price: with expected_price, PRICE_CHANGED when
        that is not it; a hold from a campaign's quota grows from it while the campaign is live (SALE_ENDED after,
        SALE_SOLD_OUT when the quota cannot cover the growth)."""
        request = inventory_pb2.ResizeHoldRequest(
            hold_id=hold_id, qty=qty, add_qty=add, max_qty=max_qty, ttl_seconds=ttl_seconds, owner=owner,
            idempotency_key=key, max_units_per_buyer=max_units, expected_price=expected_price, price=price)

        async def alone() -> list[Hold]:
            answer, trailers = await self._service.call("ResizeHold", request, user=user, idempotent=bool(key),
                                                        trailers=True)
            return _holds([answer.hold], trailers)

        (hold,) = await self._change(alone, inventory_pb2.HoldChange(user=user or "", resize=request))
        return hold

    async def release(self, hold_ids: list[str], owner: str, key: str, *, user: str | None = None) -> list[Hold]:
        """Gives the units of active holds of `owner` back, all or nothing."""
        answer = await self._service.call("ReleaseHolds", inventory_pb2.ReleaseHoldsRequest(
            hold_ids=hold_ids, owner=owner, idempotency_key=key), user=user, idempotent=bool(key))
        return _holds(answer.holds)

    async def release_if_held(self, hold_id: str, owner: str, key: str, *, user: str | None = None) -> bool:
        """Gives one hold's units back if it is still `owner`'s active hold; False (nothing done) when it
        has ended, expired or moved on, so its units are not the caller's to give back any more."""
        try:
            await self.release([hold_id], owner, key, user=user)
        except ServiceError as err:
            if err.reason not in HOLD_GONE:
                raise
            return False
        return True

    async def extend(self, hold_ids: list[str], owner: str, order_id: str, ttl_seconds: int, key: str, *,
                     from_owner: str = "", user: str | None = None, max_units: int = 0) -> list[Hold]:
        """Moves holds to an owner and order (empty: none) until now + ttl (an expired one held again, unless that
        takes its buyer past max_units: PURCHASE_LIMIT), all or nothing; with from_owner, only holds still that
        owner's (else HOLD_NOT_OWNED)."""
        answer = await self._service.call("ExtendHolds", inventory_pb2.ExtendHoldsRequest(
            hold_ids=hold_ids, owner=owner, order_id=order_id, ttl_seconds=ttl_seconds, idempotency_key=key,
            from_owner=from_owner, max_units_per_buyer=max_units), user=user, idempotent=bool(key))
        return _holds(answer.holds)

    async def commit(self, hold_ids: list[str], key: str, *, owner: str = "", user: str | None = None) -> list[Hold]:
        """Sells the units of active holds (of `owner`, when given), all or nothing; HOLD_NOT_ACTIVE when any
        is not active, HOLD_NOT_OWNED when any has moved to another owner."""
        answer = await self._service.call("CommitHolds", inventory_pb2.CommitHoldsRequest(
            hold_ids=hold_ids, idempotency_key=key, owner=owner), user=user, idempotent=bool(key))
        return _holds(answer.holds)

    async def holds(self, hold_ids: list[str]) -> dict[str, Hold]:
        """The holds among `hold_ids` as they are now, by id; unknown ids are absent."""
        if not hold_ids:
            return {}
        answer = await self._service.call("GetHolds", inventory_pb2.GetHoldsRequest(hold_ids=hold_ids),
                                          idempotent=True)
        return {h.hold_id: h for h in _holds(answer.holds)}

    async def active_holds(self, owner_prefix: str, min_age_seconds: int, after: str = "",
                           limit: int = 200) -> list[Hold]:
        """A page of active holds whose owner starts with `owner_prefix`, made at least min_age_seconds ago."""
        answer = await self._service.call("ListHolds", inventory_pb2.ListHoldsRequest(
            owner_prefix=owner_prefix, min_age_seconds=min_age_seconds, after_hold_id=after, limit=limit),
            idempotent=True)
        return _holds(answer.holds)

    async def availability(self, skus: list[str]) -> dict[str, int]:
        """Units available now per SKU; a silent instance is left for the next, as any read's, within the page's
        budget. Not refused sooner: attempts of 2 s, two of them, turned an inventory paused for 2.5 s in a crowd
        into dozens of 503s of the product page, each a shopper who reloads it (tests/e2e/test_gateway_crowd.py)."""
        answer = await self._service.call("GetAvailability", inventory_pb2.GetAvailabilityRequest(skus=skus),
                                          idempotent=True)
        return {item.sku: item.available for item in answer.items}

    # --- campaigns: the messages as inventory answers them; the catalog reshapes them for its routes -------------

    async def create_campaign(self, request: inventory_pb2.CreateCampaignRequest, *,
                              user: str | None = None) -> inventory_pb2.Campaign:
        """Creates a campaign and sets its quotas aside (CAMPAIGN_OVERLAP, OUT_OF_STOCK, SKU_NOT_FOUND,
        INVALID_ARGUMENT with `field`); retried with its idempotency key when it has one."""
        return await self._service.call("CreateCampaign", request, user=user,
                                        idempotent=bool(request.idempotency_key))

    async def cancel_campaign(self, campaign_id: str, key: str, *, user: str | None = None) -> inventory_pb2.Campaign:
        """Cancels a scheduled campaign or ends a live one now (CAMPAIGN_NOT_FOUND)."""
        return await self._service.call("CancelCampaign", inventory_pb2.CancelCampaignRequest(
            campaign_id=campaign_id, idempotency_key=key), user=user, idempotent=bool(key))

    async def campaigns(self, campaign_ids: list[str]) -> inventory_pb2.GetCampaignsResponse:
        """The campaigns among `campaign_ids` with their figures now, and the database's clock."""
        return await self._service.call("GetCampaigns", inventory_pb2.GetCampaignsRequest(campaign_ids=campaign_ids),
                                        idempotent=True)

    async def list_campaigns(self, request: inventory_pb2.ListCampaignsRequest) -> inventory_pb2.ListCampaignsResponse:
        """A page of campaigns by status or SKU, soonest start first, and the database's clock."""
        return await self._service.call("ListCampaigns", request, idempotent=True)
