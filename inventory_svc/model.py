"""The inventory's records and the rules of their states that need no I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.reasons import INVENTORY_REASONS, refuse

ACTIVE, COMMITTED, RELEASED, EXPIRED = "ACTIVE", "COMMITTED", "RELEASED", "EXPIRED"
# A hold's life: ACTIVE, then exactly one of these.
ENDED = (COMMITTED, RELEASED, EXPIRED)
# States whose units count against a buyer's purchase limit: held for them, or sold to them.
COUNTED = (ACTIVE, COMMITTED)

MAX_QTY = 10_000


@dataclass(frozen=True)
class StockRow:
    """The stock figures of one SKU."""

    sku: str
    on_hand: int
    reserved: int
    # Units of on_hand set aside as the quotas of campaigns not yet ended, neither held nor sold.
    set_aside: int = 0

    @property
    def available(self) -> int:
        """Units a buyer can hold now at the regular price."""
        return self.on_hand - self.reserved - self.set_aside


@dataclass(frozen=True)
class HoldRecord:
    """A hold as stored."""

    id: str
    owner: str
    sku: str
    qty: int
    state: str
    expires_at: datetime
    order_id: str | None
    # The end user the units are for (a cart's shopper), None for holds made without one.
    buyer: str | None = None
    # The unit price the units were held at (0: held without a price), and the campaign whose quota they came from
    # (None: regular stock). A hold keeps both for life, and so does the hold ExtendHolds makes in its place.
    price: int = 0
    campaign_id: str | None = None
    # True for a record out of the stored answer of an earlier call with the same idempotency key: the hold as
    # it was then, not necessarily as it is now. Never stored itself.
    replayed: bool = False

    def state_at(self, now: datetime) -> str:
        """The state as of `now`: an active hold past its expiry counts as expired."""
        return EXPIRED if self.state == ACTIVE and self.expires_at <= now else self.state


# --- refusals -------------------------------------------------------------------------------------

def out_of_stock(short: dict[str, int]) -> ServiceError:
    """ABORTED/OUT_OF_STOCK naming every short SKU; the first one's available units in `available`."""
    first = next(iter(short))
    return refuse(
        "OUT_OF_STOCK",
        "not enough units available: " + ", ".join(f"{s} has {n}" for s, n in short.items()),
        {"sku": first, "available": short[first], "skus": ",".join(short)},
    )


def purchase_limit(sku: str, limit: int, has: int) -> ServiceError:
    """ABORTED/PURCHASE_LIMIT: the buyer would have more than `limit` units of `sku`; `has` is what they have now."""
    return refuse(
        "PURCHASE_LIMIT",
        f"one buyer may have at most {limit} units of {sku} (held and bought); this buyer has {has}",
        {"sku": sku, "limit": limit, "has": has},
    )


def hold_not_found(hold_id: str) -> ServiceError:
    """NOT_FOUND/HOLD_NOT_FOUND."""
    return refuse("HOLD_NOT_FOUND", f"no hold {hold_id}", {"hold_id": hold_id})


def not_active(hold: HoldRecord) -> ServiceError:
    """FAILED_PRECONDITION/HOLD_NOT_ACTIVE, naming the hold's state."""
    return refuse("HOLD_NOT_ACTIVE", f"hold {hold.id} is {hold.state}", {"hold_id": hold.id, "state": hold.state})


def check_owner(holds: list[HoldRecord], owner: str) -> None:
    """With an expected owner, every hold must still be theirs."""
    for hold in holds:
        if owner and hold.owner != owner:
            raise refuse("HOLD_NOT_OWNED", f"hold {hold.id} no longer belongs to {owner}", {"hold_id": hold.id})


def sku_not_found(skus: list[str]) -> ServiceError:
    """NOT_FOUND/SKU_NOT_FOUND naming every SKU without stock."""
    return refuse("SKU_NOT_FOUND", "no stock for " + ", ".join(skus),
                  {"sku": skus[0], "skus": ",".join(skus)})


def check_on_hand(row: StockRow, on_hand: int) -> None:
    """A new on-hand figure for a SKU (SetStock, AdjustStock) may not fall below its units held and set aside for
    campaigns: ABORTED/BELOW_RESERVED otherwise."""
    if on_hand < row.reserved + row.set_aside:
        raise refuse("BELOW_RESERVED",
                     f"{row.reserved} units of {row.sku} are held and {row.set_aside} set aside for campaigns;"
                     " on hand cannot go below that",
                     {"sku": row.sku, "reserved": row.reserved, "setAside": row.set_aside})


def sale_sold_out(sku: str, remaining: int, available: int) -> ServiceError:
    """ABORTED/SALE_SOLD_OUT: the live campaign's quota cannot cover the units; what is left of it (`remaining`)
    and at the regular price (`available`)."""
    return refuse("SALE_SOLD_OUT",
                  f"the sale of {sku} has {remaining} unit(s) left; {available} available at the regular price",
                  {"sku": sku, "remaining": remaining, "available": available})


def sale_ended(skus: list[str]) -> ServiceError:
    """ABORTED/SALE_ENDED: units from a campaign's quota that can no longer be held at its sale price."""
    return refuse("SALE_ENDED", "the sale has ended for " + ", ".join(skus), {"sku": skus[0], "skus": ",".join(skus)})


def price_changed(sku: str, price: int) -> ServiceError:
    """ABORTED/PRICE_CHANGED: the units cannot be held at the price expected; `price` is the one they would be."""
    return refuse("PRICE_CHANGED", f"{sku} would be held at {price}", {"sku": sku, "price": price})


def check_qty(qty: int, field: str = "qty") -> int:
    """A quantity of 1..MAX_QTY, else INVALID_ARGUMENT naming `field`."""
    if not 1 <= qty <= MAX_QTY:
        raise invalid_argument(field, f"{field} must be within 1..{MAX_QTY}")
    return qty


# --- one transaction's view of its SKUs -----------------------------------------------------------

@dataclass
class CampaignItem:
    """One SKU of a campaign whose quota is still set aside (an open item), with its campaign's window, as a
    transaction under the SKU's lock reads it; `remaining` changes as the transaction decides its calls."""

    campaign_id: str
    sku: str
    sale_price: int
    max_per_user: int
    remaining: int
    starts_at: datetime
    ends_at: datetime

    def live_at(self, now: datetime) -> bool:
        """Adds of the SKU hold from this quota at `now`."""
        return self.starts_at <= now < self.ends_at


@dataclass(frozen=True)
class Line:
    """Units of one SKU to hold: the SKU's regular price as the caller read it, and the price they must be held at
    (0: any)."""

    sku: str
    qty: int
    price: int = 0
    expected_price: int = 0


@dataclass(frozen=True)
class Movement:
    """One ledger entry: a change of one SKU's figures and why, with the figures after it."""

    sku: str
    reason: str
    on_hand_delta: int
    reserved_delta: int
    on_hand_after: int
    reserved_after: int
    actor: str
    hold_id: str | None
    order_id: str | None
    set_aside_delta: int = 0
    set_aside_after: int = 0
    campaign_id: str | None = None


# Refusals of adds and resizes counted per campaign item, for its report.
COUNTED_REFUSALS = ("SALE_SOLD_OUT", "PURCHASE_LIMIT", "PRICE_CHANGED")


@dataclass
class StockTake:
    """What one transaction under its SKUs' locks knows of them (after their expired holds were reclaimed and
    their ended campaigns closed), and what its calls change: requests are decided one after another against it,
    each all or nothing, and the transaction then writes only the end result (new holds, changed holds, final
    figures, campaign items, refusals, ledger)."""

    now: datetime
    stock: dict[str, StockRow]
    # The existing holds the calls name, as they are under the locks.
    holds: dict[str, HoldRecord]
    # (sku, buyer) -> units held for or sold to the buyer (COUNTED states).
    buyer_units: dict[tuple[str, str], int]
    # The SKUs' open campaign items (scheduled or live), by (campaign id, SKU).
    items: dict[tuple[str, str], CampaignItem] = field(default_factory=dict)
    # (campaign id, sku, buyer) -> units of that campaign item held for or sold to the buyer (COUNTED states).
    campaign_units: dict[tuple[str, str, str], int] = field(default_factory=dict)
    new_holds: dict[str, HoldRecord] = field(default_factory=dict)
    changed: dict[str, HoldRecord] = field(default_factory=dict)
    ledger: list[Movement] = field(default_factory=list)
    # (campaign id, sku) -> (change of remaining, change of returned), for items open or closed.
    item_deltas: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    # (campaign id, sku, reason) -> adds and resizes refused.
    refusals: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # expired hold id -> the hold ExtendHolds made in its place.
    replaced: dict[str, str] = field(default_factory=dict)
    # Expired holds this transaction reclaimed before its calls were decided.
    reclaimed: int = 0

    def hold(self, hold_id: str) -> HoldRecord:
        """A hold named by a call, as this transaction has it now."""
        found = self.new_holds.get(hold_id) or self.changed.get(hold_id) or self.holds.get(hold_id)
        if found is None:
            raise hold_not_found(hold_id)
        return found

    def live_item(self, sku: str) -> CampaignItem | None:
        """The SKU's campaign item live now, if any (a SKU's campaigns never overlap)."""
        return next((i for i in self.items.values() if i.sku == sku and i.live_at(self.now)), None)

    def item_of(self, hold: HoldRecord) -> CampaignItem | None:
        """The campaign item a quota hold came from while its campaign is live; None otherwise."""
        if hold.campaign_id is None:
            return None
        item = self.items.get((hold.campaign_id, hold.sku))
        return item if item is not None and item.live_at(self.now) else None

    def has(self, sku: str, buyer: str | None) -> int:
        """Units of `sku` the buyer has now (held or sold)."""
        return self.buyer_units.get((sku, buyer), 0) if buyer else 0

    def has_of(self, item: CampaignItem, buyer: str | None) -> int:
        """Units of the campaign item the buyer has now (held or sold)."""
        return self.campaign_units.get((item.campaign_id, item.sku, buyer), 0) if buyer else 0

    def check_limit(self, sku: str, buyer: str | None, more: int, limit: int) -> None:
        """Refuses `more` units of `sku` that would take the buyer past `limit` (0: no limit)."""
        if limit > 0 and buyer and more > 0 and self.has(sku, buyer) + more > limit:
            raise purchase_limit(sku, limit, self.has(sku, buyer))

    def check_item_limit(self, item: CampaignItem, buyer: str | None, more: int, store_limit: int) -> None:
        """Refuses `more` units of the campaign item that would take the buyer past its max_per_user (0: the
        store's limit, `store_limit`; both 0: no limit)."""
        limit = item.max_per_user or store_limit
        if limit > 0 and buyer and more > 0 and self.has_of(item, buyer) + more > limit:
            raise purchase_limit(item.sku, limit, self.has_of(item, buyer))

    def short(self, wanted: dict[str, int]) -> dict[str, int]:
        """The SKUs among `wanted` with fewer units available than asked, and what they have."""
        return {sku: self.stock[sku].available for sku, qty in wanted.items() if qty > self.stock[sku].available}

    def count_refusal(self, item: CampaignItem | None, err: ServiceError) -> ServiceError:
        """Counts a refusal against the campaign item it concerns (for its report); returns it to be raised."""
        if item is not None and err.reason in COUNTED_REFUSALS:
            key = (item.campaign_id, item.sku, err.reason)
            self.refusals[key] = self.refusals.get(key, 0) + 1
        return err

    def _item_delta(self, campaign_id: str, sku: str, remaining: int, returned: int) -> None:
        old = self.item_deltas.get((campaign_id, sku), (0, 0))
        self.item_deltas[(campaign_id, sku)] = (old[0] + remaining, old[1] + returned)
        item = self.items.get((campaign_id, sku))
        if item is not None:
            item.remaining += remaining

    def _move(self, hold: HoldRecord, reason: str, reserved_delta: int, actor: str, *, sold: bool = False,
              quota: bool = False) -> None:
        """Moves a hold's units: `reserved_delta` units held (positive) or given back or sold (negative); with
        `quota`, from or back to its campaign item's quota (set aside), else, for a quota hold's units that come
        back, to regular stock as the item's `returned`."""
        row = self.stock[hold.sku]
        on_hand_delta = reserved_delta if sold else 0
        set_aside_delta = -reserved_delta if quota else 0
        row = replace(row, on_hand=row.on_hand + on_hand_delta, reserved=row.reserved + reserved_delta,
                      set_aside=row.set_aside + set_aside_delta)
        self.stock[hold.sku] = row
        if hold.campaign_id is not None and not sold:
            if quota:
                self._item_delta(hold.campaign_id, hold.sku, set_aside_delta, 0)
            elif reserved_delta < 0:
                self._item_delta(hold.campaign_id, hold.sku, 0, -reserved_delta)
        if hold.buyer and not sold:
            key = (hold.sku, hold.buyer)
            self.buyer_units[key] = self.buyer_units.get(key, 0) + reserved_delta
            if hold.campaign_id is not None:
                ckey = (hold.campaign_id, hold.sku, hold.buyer)
                self.campaign_units[ckey] = self.campaign_units.get(ckey, 0) + reserved_delta
        self.ledger.append(Movement(hold.sku, reason, on_hand_delta, reserved_delta, row.on_hand, row.reserved,
                                    actor, hold.id, hold.order_id, set_aside_delta, row.set_aside,
                                    hold.campaign_id))

    def _put(self, hold: HoldRecord) -> HoldRecord:
        if hold.id in self.new_holds:
            self.new_holds[hold.id] = hold
        else:
            self.changed[hold.id] = hold
        return hold

    def _source(self, line: Line) -> tuple[CampaignItem | None, int]:
        """Where a line's units come from and at what price: the live campaign item's quota at its sale price
        (expected price 0 or the sale price), else regular stock at the line's price (expected 0 or that price);
        PRICE_CHANGED (counted against a live item) otherwise."""
        item = self.live_item(line.sku)
        if item is not None:
            if line.expected_price in (0, item.sale_price):
                return item, item.sale_price
            if line.expected_price == line.price:
                return None, line.price
            raise self.count_refusal(item, price_changed(line.sku, item.sale_price))
        if line.expected_price in (0, line.price):
            return None, line.price
        named = next((i for i in self.items.values() if i.sku == line.sku and i.sale_price == line.expected_price),
                     None)
        raise self.count_refusal(named, price_changed(line.sku, line.price))

    # The calls. Each checks everything first and changes nothing when it refuses.

    def create(self, owner: str, lines: list[Line], ttl_seconds: int, actor: str, *, buyer: str | None = None,
               limit: int = 0) -> list[HoldRecord]:
        """Holds every line's units for `owner` until now + ttl, or nothing at all: from a live campaign's quota
        at its sale price unless the regular price is expected, else from regular stock at the line's price."""
        if missing := [line.sku for line in lines if line.sku not in self.stock]:
            raise sku_not_found(missing)
        sources = [self._source(line) for line in lines]
        for line, (item, _) in zip(lines, sources):
            try:
                self.check_limit(line.sku, buyer, line.qty, limit)
                if item is not None:
                    self.check_item_limit(item, buyer, line.qty, limit)
            except ServiceError as err:
                raise self.count_refusal(item, err) from None
        for line, (item, _) in zip(lines, sources):
            if item is not None and line.qty > item.remaining:
                raise self.count_refusal(item, sale_sold_out(line.sku, item.remaining,
                                                             self.stock[line.sku].available))
        if short := self.short({line.sku: line.qty for line, (item, _) in zip(lines, sources) if item is None}):
            raise out_of_stock(short)
        expires_at = self.now + timedelta(seconds=ttl_seconds)
        made = []
        for line, (item, price) in zip(lines, sources):
            hold = HoldRecord(str(uuid.uuid4()), owner, line.sku, line.qty, ACTIVE, expires_at, None, buyer or None,
                              price=price, campaign_id=item.campaign_id if item is not None else None)
            self.new_holds[hold.id] = hold
            self._move(hold, "HOLD", line.qty, actor, quota=item is not None)
            made.append(hold)
        return made

    def resize(self, hold_id: str, actor: str, *, qty: int = 0, add: int = 0, ttl_seconds: int = 0, owner: str = "",
               max_qty: int = 0, limit: int = 0, expected_price: int = 0, price: int = 0) -> HoldRecord:
        """Sets an active hold to `qty` units, or grows it by `add` (and, with a ttl, runs it until now + ttl).
        The hold keeps its price and its source: a quota hold grows from its quota only while its campaign is
        live, and gives units back to the quota while it is live, to regular stock after. A regular hold does not
        grow at a price that is no longer the one an add would be at (`price`, the regular price now; a live
        campaign's sale price unless its regular price is expected): PRICE_CHANGED, one hold keeping one price."""
        hold = self.hold(hold_id)
        check_owner([hold], owner)
        if hold.state != ACTIVE:
            raise not_active(hold)
        item = self.item_of(hold)
        if expected_price and expected_price != hold.price:
            named = item if item is not None else next(
                (i for i in self.items.values() if i.sku == hold.sku and i.live_at(self.now)
                 and i.sale_price == expected_price), None)
            raise self.count_refusal(named, price_changed(hold.sku, hold.price))
        target = hold.qty + add if add else qty
        if max_qty and target > max_qty:
            raise refuse("QTY_LIMIT",
                         f"a hold of this caller holds at most {max_qty} units, this one would hold {target}",
                         {"max": max_qty, "qty": target}, table=INVENTORY_REASONS)
        check_qty(target)
        delta = target - hold.qty
        if delta > 0 and hold.campaign_id is not None and item is None:
            raise sale_ended([hold.sku])
        if delta > 0 and hold.campaign_id is None:
            live = self.live_item(hold.sku)
            if live is not None and not expected_price:
                # An add of a SKU on sale is at the sale price; this line's is the regular one.
                raise self.count_refusal(live, price_changed(hold.sku, live.sale_price))
            if price and hold.price and price != hold.price:
                raise price_changed(hold.sku, price)
        try:
            self.check_limit(hold.sku, hold.buyer, delta, limit)
            if item is not None:
                self.check_item_limit(item, hold.buyer, delta, limit)
        except ServiceError as err:
            raise self.count_refusal(item, err) from None
        if delta > 0 and item is not None and delta > item.remaining:
            raise self.count_refusal(item, sale_sold_out(hold.sku, item.remaining, self.stock[hold.sku].available))
        if delta > 0 and item is None and (short := self.short({hold.sku: delta})):
            raise out_of_stock(short)
        expires_at = self.now + timedelta(seconds=ttl_seconds) if ttl_seconds else hold.expires_at
        updated = self._put(replace(hold, qty=target, expires_at=expires_at))
        if delta:
            self._move(updated, "RESIZE", delta, actor, quota=item is not None)
        return updated

    def end(self, hold_ids: list[str], state: str, actor: str, *, owner: str = "") -> list[HoldRecord]:
        """Ends active holds as RELEASED (units back: to a live campaign's quota, else regular stock) or COMMITTED
        (units sold), all or nothing."""
        holds = [self.hold(i) for i in hold_ids]
        check_owner(holds, owner)
        if inactive := [h for h in holds if h.state != ACTIVE]:
            raise not_active(inactive[0])
        sold = state == COMMITTED
        ended = []
        for hold in holds:
            ended.append(self._put(replace(hold, state=state)))
            self._move(hold, "COMMIT" if sold else "RELEASE", -hold.qty, actor, sold=sold,
                       quota=not sold and self.item_of(hold) is not None)
        return ended

    def extend(self, holds: list[HoldRecord], owner: str, order_id: str | None, ttl_seconds: int, actor: str, *,
               from_owner: str = "", limit: int = 0) -> list[HoldRecord]:
        """Moves holds to `owner`/`order_id` until now + ttl, all or nothing: an active one in place, an expired one
        replaced by a new hold of the same units at the same price (a quota hold only from its quota while its
        campaign is live: SALE_ENDED otherwise); `holds` are the holds named, replacements already followed."""
        check_owner(holds, from_owner)
        if ended := [h for h in holds if h.state in (COMMITTED, RELEASED)]:
            raise not_active(ended[0])
        expired = [h for h in holds if h.state_at(self.now) == EXPIRED]
        if gone := sorted({h.sku for h in expired if h.campaign_id is not None and self.item_of(h) is None}):
            raise sale_ended(gone)
        regular: dict[str, int] = {}
        per_buyer: dict[tuple[str, str], int] = {}
        per_item: dict[tuple[str, str], int] = {}
        per_item_buyer: dict[tuple[str, str, str], int] = {}
        for h in expired:
            item = self.item_of(h)
            if item is None:
                regular[h.sku] = regular.get(h.sku, 0) + h.qty
            else:
                key = (item.campaign_id, item.sku)
                per_item[key] = per_item.get(key, 0) + h.qty
                if h.buyer:
                    ikey = (item.campaign_id, item.sku, h.buyer)
                    per_item_buyer[ikey] = per_item_buyer.get(ikey, 0) + h.qty
            if h.buyer:
                per_buyer[(h.sku, h.buyer)] = per_buyer.get((h.sku, h.buyer), 0) + h.qty
        for (sku, buyer), more in per_buyer.items():
            self.check_limit(sku, buyer, more, limit)
        for (campaign_id, sku, buyer), more in per_item_buyer.items():
            self.check_item_limit(self.items[(campaign_id, sku)], buyer, more, limit)
        for key, more in per_item.items():
            item = self.items[key]
            if more > item.remaining:
                raise sale_sold_out(item.sku, item.remaining, self.stock[item.sku].available)
        if short := self.short(regular):
            raise out_of_stock(short)
        expires_at = self.now + timedelta(seconds=ttl_seconds)
        result = []
        for h in holds:
            if h.state_at(self.now) == ACTIVE:
                result.append(self._put(replace(h, owner=owner, order_id=order_id, expires_at=expires_at)))
                continue
            new = HoldRecord(str(uuid.uuid4()), owner, h.sku, h.qty, ACTIVE, expires_at, order_id, h.buyer,
                             price=h.price, campaign_id=h.campaign_id)
            self.new_holds[new.id] = new
            self.replaced[h.id] = new.id
            self._move(new, "HOLD", h.qty, actor, quota=new.campaign_id is not None)
            result.append(new)
        return result
