"""The order service's records, their states, and the rules about them that need no I/O."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from inventory_svc.client import COMMITTED, HOLD_GONE, OUT_OF_STOCK
from shop_runtime.validation import CURRENCY

if TYPE_CHECKING:
    from cart_svc.client import HandedLine

PENDING_PAYMENT, PAID, EXPIRED = "PENDING_PAYMENT", "PAID", "EXPIRED"
# A payment attempt: PENDING (committed before the provider is called), then one of the others.
PENDING, SUCCEEDED, DECLINED, REFUNDED = "PENDING", "SUCCEEDED", "DECLINED", "REFUNDED"

# A sale line whose hold expired cannot be held again at its sale price: its campaign is no longer live, or its quota
# is spent. For an order awaiting payment, as OUT_OF_STOCK is: its units are gone.
SALE_ENDED, SALE_SOLD_OUT = "SALE_ENDED", "SALE_SOLD_OUT"

# Inventory's refusals that mean an order's units are no longer held for it.
HOLDS_GONE = HOLD_GONE | {OUT_OF_STOCK, SALE_ENDED, SALE_SOLD_OUT}

# A payment started inside the window keeps the units this much longer while the provider answers.
PAYMENT_GRACE_SECONDS = 60
# The longest hold inventory grants.
MAX_HOLD_SECONDS = 86_400


@dataclass(frozen=True)
class Item:
    """An order line at the price its units were held at (the hold's, handed over by the cart)."""

    sku: str
    name: str
    price: int
    qty: int
    hold_id: str
    # The campaign whose quota the units came from; "" for regular stock.
    campaign_id: str = ""


@dataclass(frozen=True)
class OrderRecord:
    """An order as stored."""

    id: str
    user_id: str
    status: str
    total: int
    currency: str
    pay_before: datetime
    created_at: datetime
    payment_id: str | None
    paid_at: datetime | None
    items: list[Item] = field(default_factory=list)

    def status_at(self, now: datetime) -> str:
        """The status as of `now`: an unpaid order past its window is expired, swept or not."""
        return EXPIRED if self.status == PENDING_PAYMENT and self.pay_before <= now else self.status

    @property
    def hold_ids(self) -> list[str]:
        """The holds that keep the order's units, in line order."""
        return [i.hold_id for i in self.items]

    @property
    def units(self) -> dict[str, int]:
        """Units per SKU."""
        units: dict[str, int] = {}
        for i in self.items:
            units[i.sku] = units.get(i.sku, 0) + i.qty
        return units

    def payment_hold_seconds(self) -> int:
        """How long a payment keeps the order's units: the order's window and a grace for the provider.

        It depends only on the stored order, so a retry of an attempt replays the same (idempotent)
        inventory call instead of being refused as a reused key."""
        window = max(1, math.ceil((self.pay_before - self.created_at).total_seconds()))
        return min(window + PAYMENT_GRACE_SECONDS, MAX_HOLD_SECONDS)


@dataclass(frozen=True)
class PaymentAttempt:
    """A payment attempt, under the user's idempotency key."""

    request_hash: bytes
    order_id: str
    payment_id: str
    state: str


def sold(hold_states: list[str], expected: int) -> bool:
    """Whether every one of an order's `expected` holds was sold (CommitHolds sells all or none)."""
    return len(hold_states) == expected and all(s == COMMITTED for s in hold_states)


def as_order_uuid(order_id: str) -> str | None:
    """An order id as stored (a uuid), or None for a text that is not one (no order has it)."""
    try:
        return str(uuid.UUID(order_id))
    except ValueError:
        return None


def order_of(order_id: str, user: str, lines: list[HandedLine], now: datetime) -> OrderRecord:
    """The order a hand-over of the cart makes: the lines' units, names, prices and campaigns as handed over (the
    prices the units were held at), its total their sum."""
    items = [Item(x.sku, x.name, x.price, x.qty, x.hold_id, x.campaign_id) for x in lines]
    # The window ends when the first hold runs out: a replayed hand-over keeps its first expiry.
    pay_before = min(x.reserved_until for x in lines)
    return OrderRecord(order_id, user, PENDING_PAYMENT, sum(i.price * i.qty for i in items), CURRENCY,
                       pay_before, min(now, pay_before), None, None, items)
