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

    @property
    def available(self) -> int:
        """Units a buyer can hold now."""
        return self.on_hand - self.reserved


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


def check_qty(qty: int, field: str = "qty") -> int:
    """A quantity of 1..MAX_QTY, else INVALID_ARGUMENT naming `field`."""
    if not 1 <= qty <= MAX_QTY:
        raise invalid_argument(field, f"{field} must be within 1..{MAX_QTY}")
    return qty


# --- one transaction's view of its SKUs -----------------------------------------------------------

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


@dataclass
class StockTake:
    """What one transaction under its SKUs' locks knows of them (after their expired holds were reclaimed),
    and what its calls change: requests are decided one after another against it, each all or nothing, and
    the transaction then writes only the end result (new holds, changed holds, final figures, ledger)."""

    now: datetime
    stock: dict[str, StockRow]
    # The existing holds the calls name, as they are under the locks.
    holds: dict[str, HoldRecord]
    # (sku, buyer) -> units held for or sold to the buyer (COUNTED states).
    buyer_units: dict[tuple[str, str], int]
    new_holds: dict[str, HoldRecord] = field(default_factory=dict)
    changed: dict[str, HoldRecord] = field(default_factory=dict)
    ledger: list[Movement] = field(default_factory=list)
    # Expired holds this transaction reclaimed before its calls were decided.
    reclaimed: int = 0

    def hold(self, hold_id: str) -> HoldRecord:
        """A hold named by a call, as this transaction has it now."""
        found = self.new_holds.get(hold_id) or self.changed.get(hold_id) or self.holds.get(hold_id)
        if found is None:
            raise hold_not_found(hold_id)
        return found

    def has(self, sku: str, buyer: str | None) -> int:
        """Units of `sku` the buyer has now (held or sold)."""
        return self.buyer_units.get((sku, buyer), 0) if buyer else 0

    def check_limit(self, sku: str, buyer: str | None, more: int, limit: int) -> None:
        """Refuses `more` units of `sku` that would take the buyer past `limit` (0: no limit)."""
        if limit > 0 and buyer and more > 0 and self.has(sku, buyer) + more > limit:
            raise purchase_limit(sku, limit, self.has(sku, buyer))

    def short(self, wanted: dict[str, int]) -> dict[str, int]:
        """The SKUs among `wanted` with fewer units available than asked, and what they have."""
        return {sku: self.stock[sku].available for sku, qty in wanted.items() if qty > self.stock[sku].available}

    def _move(self, hold: HoldRecord, reason: str, reserved_delta: int, actor: str, *, sold: bool = False) -> None:
        row = self.stock[hold.sku]
        on_hand_delta = reserved_delta if sold else 0
        row = replace(row, on_hand=row.on_hand + on_hand_delta, reserved=row.reserved + reserved_delta)
        self.stock[hold.sku] = row
        if hold.buyer and not sold:
            key = (hold.sku, hold.buyer)
            self.buyer_units[key] = self.buyer_units.get(key, 0) + reserved_delta
        self.ledger.append(Movement(hold.sku, reason, on_hand_delta, reserved_delta, row.on_hand, row.reserved,
                                    actor, hold.id, hold.order_id))

    def _put(self, hold: HoldRecord) -> HoldRecord:
        if hold.id in self.new_holds:
            self.new_holds[hold.id] = hold
        else:
            self.changed[hold.id] = hold
        return hold

    # The calls. Each checks everything first and changes nothing when it refuses.

    def create(self, owner: str, lines: dict[str, int], ttl_seconds: int, actor: str, *, buyer: str | None = None,
               limit: int = 0) -> list[HoldRecord]:
        """Holds every line's units for `owner` until now + ttl, or nothing at all."""
        if missing := [sku for sku in lines if sku not in self.stock]:
            raise sku_not_found(missing)
        for sku, qty in lines.items():
            self.check_limit(sku, buyer, qty, limit)
        if short := self.short(lines):
            raise out_of_stock(short)
        expires_at = self.now + timedelta(seconds=ttl_seconds)
        made = []
        for sku, qty in lines.items():
            hold = HoldRecord(str(uuid.uuid4()), owner, sku, qty, ACTIVE, expires_at, None, buyer or None)
            self.new_holds[hold.id] = hold
            self._move(hold, "HOLD", qty, actor)
            made.append(hold)
        return made

    def resize(self, hold_id: str, actor: str, *, qty: int = 0, add: int = 0, ttl_seconds: int = 0, owner: str = "",
               max_qty: int = 0, limit: int = 0) -> HoldRecord:
        """Sets an active hold to `qty` units, or grows it by `add` (and, with a ttl, runs it until now + ttl)."""
        hold = self.hold(hold_id)
        check_owner([hold], owner)
        if hold.state != ACTIVE:
            raise not_active(hold)
        target = hold.qty + add if add else qty
        if max_qty and target > max_qty:
            raise refuse("QTY_LIMIT",
                         f"a hold of this caller holds at most {max_qty} units, this one would hold {target}",
                         {"max": max_qty, "qty": target}, table=INVENTORY_REASONS)
        check_qty(target)
        delta = target - hold.qty
        self.check_limit(hold.sku, hold.buyer, delta, limit)
        if delta > 0 and (short := self.short({hold.sku: delta})):
            raise out_of_stock(short)
        expires_at = self.now + timedelta(seconds=ttl_seconds) if ttl_seconds else hold.expires_at
        updated = self._put(replace(hold, qty=target, expires_at=expires_at))
        if delta:
            self._move(updated, "RESIZE", delta, actor)
        return updated

    def end(self, hold_ids: list[str], state: str, actor: str, *, owner: str = "") -> list[HoldRecord]:
        """Ends active holds as RELEASED (units back) or COMMITTED (units sold), all or nothing."""
        holds = [self.hold(i) for i in hold_ids]
        check_owner(holds, owner)
        if inactive := [h for h in holds if h.state != ACTIVE]:
            raise not_active(inactive[0])
        sold = state == COMMITTED
        ended = []
        for hold in holds:
            ended.append(self._put(replace(hold, state=state)))
            self._move(hold, "COMMIT" if sold else "RELEASE", -hold.qty, actor, sold=sold)
        return ended
