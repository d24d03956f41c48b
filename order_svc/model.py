"""The order service's records, their states, and the rules about them that need no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

PENDING_PAYMENT, PAID, EXPIRED = "PENDING_PAYMENT", "PAID", "EXPIRED"
# A payment attempt: PENDING (committed before the provider is called), then one of the others.
PENDING, SUCCEEDED, DECLINED, REFUNDED = "PENDING", "SUCCEEDED", "DECLINED", "REFUNDED"

# A payment started inside the window keeps the units this much longer while the provider answers.
PAYMENT_GRACE_SECONDS = 60
# The longest hold inventory grants.
MAX_HOLD_SECONDS = 86_400


@dataclass(frozen=True)
class Item:
    """An order line, its price fixed at checkout."""

    sku: str
    name: str
    price: int
    qty: int
    hold_id: str


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
    return len(hold_states) == expected and all(s == "COMMITTED" for s in hold_states)
