"""Inventory in memory, as InventoryClient shows it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from inventory_svc.client import ACTIVE, COMMITTED, EXPIRED, RELEASED, Hold, InventoryClient
from tests.clock import ManualClock
from shop_runtime.reasons import INVENTORY_REASONS, refuse
from tests.unit.fakes.losses import Losses


@dataclass
class _StoredHold:
    hold_id: str
    owner: str
    sku: str
    qty: int
    state: str
    expires_at: datetime
    order_id: str
    created_at: datetime
    replaced_by: str | None = None
    buyer: str | None = None
    price: int = 0
    campaign_id: str = ""

    def record(self) -> Hold:
        return Hold(self.hold_id, self.owner, self.sku, self.qty, self.state, self.expires_at, self.order_id,
                    price=self.price, campaign_id=self.campaign_id)


@dataclass
class Sale:
    """A minimal campaign of one SKU: its quota is set aside while it is live (what holds from it have not taken),
    and goes back to regular stock when it ends."""

    campaign_id: str
    sale_price: int
    quota: int
    live: bool = True


class FakeInventory(Losses):
    """Inventory as `InventoryClient` shows it: stock per SKU, holds that end once (sold, given back, or
    expired by the ManualClock), all-or-nothing writes, and idempotency keys whose first answer is replayed.
    Holds keep the price they were made at (the caller's regular price, or a live sale's price from its quota:
    `start_sale`, `end_sale`); an expected price that is not the one the units would be held at is PRICE_CHANGED.

    `calls` lists every write that reached it, as (method, request), replays included."""

    def __init__(self, clock: ManualClock, stock: dict[str, int]):
        super().__init__("inventory")
        self.clock = clock
        self.on_hand = dict(stock)
        self.stored: dict[str, _StoredHold] = {}
        self.calls: list[tuple[str, dict]] = []
        self._answers: dict[tuple[str, str], tuple[dict, Any]] = {}
        self.sales: dict[str, Sale] = {}  # sku -> its campaign, live or ended

    # What tests set and look at.

    def start_sale(self, sku: str, campaign_id: str, sale_price: int, quota: int) -> None:
        """A campaign of `sku` goes live now, its quota set aside from the available units."""
        assert quota <= self.available(sku)
        self.sales[sku] = Sale(campaign_id, sale_price, quota)

    def end_sale(self, sku: str) -> None:
        """The campaign of `sku` ends: what is left of its quota is back in regular stock."""
        self.sales[sku].live = False

    def remaining(self, sku: str) -> int:
        """Units of the live quota of `sku` neither held nor sold (0 without a live sale)."""
        self._expire()
        sale = self.sales.get(sku)
        if sale is None or not sale.live:
            return 0
        return sale.quota - sum(h.qty for h in self.stored.values()
                                if h.campaign_id == sale.campaign_id and h.state in (ACTIVE, COMMITTED))

    def available(self, sku: str) -> int:
        """Units of `sku` that can be held now at the regular price."""
        self._expire()
        held = sum(h.qty for h in self.stored.values() if h.sku == sku and h.state == ACTIVE)
        return self.on_hand.get(sku, 0) - held - self.remaining(sku)

    def hold_of(self, hold_id: str) -> Hold:
        """A hold as it is now."""
        self._expire()
        return self.stored[hold_id].record()

    def holds_of(self, owner: str) -> list[Hold]:
        """An owner's holds as they are now, in the order they were made."""
        self._expire()
        return [h.record() for h in self.stored.values() if h.owner == owner]

    # The rules.

    def _expire(self) -> None:
        now = self.clock.now()
        for h in self.stored.values():
            if h.state == ACTIVE and h.expires_at <= now:
                h.state = EXPIRED

    def _find(self, hold_ids: list[str]) -> list[_StoredHold]:
        for hold_id in hold_ids:
            if hold_id not in self.stored:
                raise refuse("HOLD_NOT_FOUND", f"no hold {hold_id}", dict(hold_id=hold_id))
        return [self.stored[i] for i in hold_ids]

    @staticmethod
    def _check_owner(holds: list[_StoredHold], owner: str) -> None:
        for h in holds:
            if owner and h.owner != owner:
                raise refuse("HOLD_NOT_OWNED",
                             f"hold {h.hold_id} no longer belongs to {owner}", dict(hold_id=h.hold_id))

    @staticmethod
    def _check_active(holds: list[_StoredHold]) -> None:
        for h in holds:
            if h.state != ACTIVE:
                raise refuse("HOLD_NOT_ACTIVE", f"hold {h.hold_id} is {h.state}",
                             dict(hold_id=h.hold_id, state=h.state))

    def _check_stock(self, wanted: dict[str, int]) -> None:
        short = {sku: self.available(sku) for sku, qty in wanted.items() if qty > self.available(sku)}
        if short:
            sku = next(iter(short))
            raise refuse("OUT_OF_STOCK", f"not enough units of {sku}",
                         dict(sku=sku, available=short[sku], skus=",".join(short)))

    def _check_limit(self, sku: str, buyer: str | None, more: int, limit: int) -> None:
        """The per-buyer purchase limit: units held for or sold to the buyer, plus `more`, at most `limit`."""
        if not (limit and buyer and more > 0):
            return
        has = sum(h.qty for h in self.stored.values() if h.sku == sku and h.buyer == buyer
                  and h.state in (ACTIVE, COMMITTED))
        if has + more > limit:
            raise refuse("PURCHASE_LIMIT", f"at most {limit} units of {sku}", dict(sku=sku, limit=limit, has=has))

    def _live_sale(self, sku: str, campaign_id: str = "") -> Sale | None:
        sale = self.sales.get(sku)
        return sale if sale is not None and sale.live and campaign_id in ("", sale.campaign_id) else None

    def _check_quota(self, sku: str, qty: int) -> None:
        if qty > (remaining := self.remaining(sku)):
            raise refuse("SALE_SOLD_OUT", f"the sale of {sku} has {remaining} unit(s) left",
                         dict(sku=sku, remaining=remaining, available=self.available(sku)))

    def _source(self, sku: str, qty: int, price: int, expected: int) -> tuple[int, str]:
        """(price, campaign) the units of a new hold would be held at, checked: from a live sale's quota unless
        the regular price is expected, else regular stock at the caller's price."""
        sale = self._live_sale(sku)
        if sale is not None and expected in (0, sale.sale_price):
            self._check_quota(sku, qty)
            return sale.sale_price, sale.campaign_id
        if expected and expected != price:
            would = sale.sale_price if sale is not None else price
            raise refuse("PRICE_CHANGED", f"{sku} would be held at {would}", dict(sku=sku, price=would))
        self._check_stock({sku: qty})
        return price, ""

    def _new_hold(self, owner: str, sku: str, qty: int, ttl_seconds: int, order_id: str = "",
                  buyer: str | None = None, price: int = 0, campaign_id: str = "") -> _StoredHold:
        now = self.clock.now()
        hold = _StoredHold(str(uuid.uuid4()), owner, sku, qty, ACTIVE, now + timedelta(seconds=ttl_seconds),
                           order_id, now, buyer=buyer, price=price, campaign_id=campaign_id)
        self.stored[hold.hold_id] = hold
        return hold

    def _newest(self, hold_id: str) -> str:
        while (hold := self.stored.get(hold_id)) is not None and hold.replaced_by:
            hold_id = hold.replaced_by
        return hold_id

    async def _write(self, method: str, key: str, request: dict, work: Callable[[], Any]) -> Any:
        """Runs `work` once per key: the same key with the same request replays the first answer."""
        self.calls.append((method, request))

        async def once() -> Any:
            if key and (method, key) in self._answers:
                first, answer = self._answers[(method, key)]
                if first != request:
                    raise refuse("IDEMPOTENCY_KEY_REUSED",
                                 "this idempotency key was used for a different request", dict(operation=method))
                return answer
            self._expire()
            answer = work()  # validates everything before it changes anything: all or nothing
            if key:
                self._answers[(method, key)] = (request, answer)
            return answer

        return await self._lossy(method, once)

    # InventoryClient's methods.

    async def hold(self, owner: str, lines: dict[str, int], ttl_seconds: int, key: str, *,
                   user: str | None = None, buyer: str = "", max_units: int = 0, prices: dict[str, int] | None = None,
                   expected_prices: dict[str, int] | None = None) -> list[Hold]:
        prices, expected_prices = dict(prices or {}), dict(expected_prices or {})

        def work() -> list[Hold]:
            for sku, qty in lines.items():
                self._check_limit(sku, buyer, qty, max_units)
            sources = {sku: self._source(sku, qty, prices.get(sku, 0), expected_prices.get(sku, 0))
                       for sku, qty in lines.items()}
            return [self._new_hold(owner, sku, qty, ttl_seconds, buyer=buyer or None, price=sources[sku][0],
                                   campaign_id=sources[sku][1]).record() for sku, qty in lines.items()]

        return await self._write("hold", key, dict(owner=owner, lines=dict(lines), ttl=ttl_seconds, buyer=buyer,
                                                   prices=prices, expected_prices=expected_prices), work)

    async def resize(self, hold_id: str, ttl_seconds: int, owner: str, key: str, *, qty: int = 0, add: int = 0,
                     max_qty: int = 0, user: str | None = None, max_units: int = 0, expected_price: int = 0,
                     price: int = 0) -> Hold:
        def work() -> Hold:
            (h,) = self._find([hold_id])
            self._check_owner([h], owner)
            self._check_active([h])
            target = h.qty + add if add else qty
            if max_qty and target > max_qty:
                raise refuse("QTY_LIMIT", f"at most {max_qty} units, this one would hold {target}",
                             dict(max=max_qty, qty=target), table=INVENTORY_REASONS)
            if expected_price and expected_price != h.price:
                raise refuse("PRICE_CHANGED", f"hold {h.hold_id} keeps its price {h.price}",
                             dict(sku=h.sku, price=h.price))
            self._check_limit(h.sku, h.buyer, target - h.qty, max_units)
            if target > h.qty and h.campaign_id:  # one line, one price: a sale hold grows from its quota only
                if self._live_sale(h.sku, h.campaign_id) is None:
                    raise refuse("SALE_ENDED", f"the sale of {h.sku} has ended", dict(sku=h.sku, skus=h.sku))
                self._check_quota(h.sku, target - h.qty)
            elif target > h.qty:
                # A regular hold grows only at the price an add would be at now (inventory_svc.model.resize).
                sale = self._live_sale(h.sku)
                if sale is not None and not expected_price:
                    raise refuse("PRICE_CHANGED", f"{h.sku} is on sale", dict(sku=h.sku, price=sale.sale_price))
                if price and h.price and price != h.price:
                    raise refuse("PRICE_CHANGED", f"{h.sku} costs {price} now", dict(sku=h.sku, price=price))
                self._check_stock({h.sku: target - h.qty})
            h.qty = target
            if ttl_seconds:
                h.expires_at = self.clock.now() + timedelta(seconds=ttl_seconds)
            return h.record()

        return await self._write("resize", key, dict(hold_id=hold_id, ttl=ttl_seconds, owner=owner, qty=qty, add=add,
                                                     max_qty=max_qty, expected_price=expected_price), work)

    async def release(self, hold_ids: list[str], owner: str, key: str, *, user: str | None = None) -> list[Hold]:
        def work() -> list[Hold]:
            holds = self._find(hold_ids)
            self._check_owner(holds, owner)
            self._check_active(holds)
            for h in holds:
                h.state = RELEASED
            return [h.record() for h in holds]

        return await self._write("release", key, dict(hold_ids=list(hold_ids), owner=owner), work)

    # The real client's: it only calls release() and reads the refusal.
    release_if_held = InventoryClient.release_if_held

    async def extend(self, hold_ids: list[str], owner: str, order_id: str, ttl_seconds: int, key: str, *,
                     from_owner: str = "", user: str | None = None, max_units: int = 0) -> list[Hold]:
        def work() -> list[Hold]:
            # An expired hold already held again stands for its replacement.
            holds = self._find([self._newest(i) for i in hold_ids])
            self._check_owner(holds, from_owner)
            self._check_active([h for h in holds if h.state != EXPIRED])
            again: dict[str, int] = {}
            for h in holds:
                if h.state == EXPIRED and not h.campaign_id:
                    again[h.sku] = again.get(h.sku, 0) + h.qty
            for h in holds:
                if h.state == EXPIRED:
                    self._check_limit(h.sku, h.buyer, h.qty, max_units)
            # An expired sale hold is held again only from its campaign's quota, while the campaign is live.
            if ended := [h.sku for h in holds if h.state == EXPIRED and h.campaign_id
                         and self._live_sale(h.sku, h.campaign_id) is None]:
                raise refuse("SALE_ENDED", "the sale has ended: " + ", ".join(ended),
                             dict(sku=ended[0], skus=",".join(ended)))
            for h in holds:
                if h.state == EXPIRED and h.campaign_id:
                    self._check_quota(h.sku, h.qty)
            self._check_stock(again)
            result = []
            for h in holds:
                if h.state == ACTIVE:
                    h.owner, h.order_id = owner, order_id
                    h.expires_at = self.clock.now() + timedelta(seconds=ttl_seconds)
                    result.append(h.record())
                else:
                    new = self._new_hold(owner, h.sku, h.qty, ttl_seconds, order_id, buyer=h.buyer, price=h.price,
                                         campaign_id=h.campaign_id)
                    h.replaced_by = new.hold_id
                    result.append(new.record())
            return result

        return await self._write("extend", key, dict(hold_ids=list(hold_ids), owner=owner, order_id=order_id,
                                                     ttl=ttl_seconds, from_owner=from_owner), work)

    async def commit(self, hold_ids: list[str], key: str, *, owner: str = "", user: str | None = None) -> list[Hold]:
        def work() -> list[Hold]:
            holds = self._find(hold_ids)
            self._check_owner(holds, owner)
            self._check_active(holds)
            for h in holds:
                h.state = COMMITTED
                self.on_hand[h.sku] -= h.qty
            return [h.record() for h in holds]

        return await self._write("commit", key, dict(hold_ids=list(hold_ids), owner=owner), work)

    async def holds(self, hold_ids: list[str]) -> dict[str, Hold]:
        if not hold_ids:  # as the client: no call at all
            return {}

        async def read() -> dict[str, Hold]:
            self._expire()
            return {i: self.stored[i].record() for i in hold_ids if i in self.stored}

        return await self._lossy("holds", read)

    async def active_holds(self, owner_prefix: str, min_age_seconds: int, after: str = "",
                           limit: int = 200) -> list[Hold]:
        async def read() -> list[Hold]:
            self._expire()
            made_before = self.clock.now() - timedelta(seconds=min_age_seconds)
            found = sorted((h for h in self.stored.values() if h.state == ACTIVE and h.owner.startswith(owner_prefix)
                            and h.created_at <= made_before and h.hold_id > after), key=lambda h: h.hold_id)
            return [h.record() for h in found[:limit]]

        return await self._lossy("active_holds", read)

    async def availability(self, skus: list[str]) -> dict[str, int]:
        async def read() -> dict[str, int]:
            return {sku: self.available(sku) for sku in skus}

        return await self._lossy("availability", read)
