"""The inventory's records and the rules of their states that need no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

ACTIVE, COMMITTED, RELEASED, EXPIRED = "ACTIVE", "COMMITTED", "RELEASED", "EXPIRED"
# A hold's life: ACTIVE, then exactly one of these.
ENDED = (COMMITTED, RELEASED, EXPIRED)


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

    def state_at(self, now: datetime) -> str:
        """The state as of `now`: an active hold past its expiry counts as expired."""
        return EXPIRED if self.state == ACTIVE and self.expires_at <= now else self.state
