"""The cart's records and the rules about them that need no I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from catalog_svc.client import Product
from inventory_svc.client import ACTIVE, COMMITTED, RELEASED, Hold

MAX_LINE_QTY = 100


@dataclass(frozen=True)
class Line:
    """A cart line as the cart records it: the SKU, the hold that keeps its units, and the cart's last word
    on that hold (qty and reserved_until). The hold in inventory is the truth: the cart shows and checks
    out the hold's own quantity, which differs from `qty` only after a change whose answer was lost."""

    sku: str
    qty: int
    hold_id: str
    reserved_until: datetime
    added_at: datetime


# A product since removed from the catalog.
MISSING_PRODUCT = Product(name="", price=0)


@dataclass(frozen=True)
class ViewLine:
    """A line as the shopper sees it: units and expiry from the hold, name and price from the catalog."""

    sku: str
    product: Product
    qty: int
    reserved_until: datetime
    expired: bool

    @property
    def subtotal(self) -> int:
        """price times qty."""
        return self.product.price * self.qty


@dataclass(frozen=True)
class CartView:
    """A user's cart with current names and prices."""

    lines: list[ViewLine]

    @property
    def total(self) -> int:
        """The sum of the lines' subtotals."""
        return sum(line.subtotal for line in self.lines)

    def to_json(self) -> dict:
        """The view as stored for the replay of an idempotent change."""
        return {"lines": [{"sku": x.sku, "name": x.product.name, "price": x.product.price, "qty": x.qty,
                           "reserved_until": x.reserved_until.isoformat(), "expired": x.expired} for x in self.lines]}

    @classmethod
    def from_json(cls, doc: dict) -> "CartView":
        """A view stored by to_json."""
        return cls([ViewLine(x["sku"], Product(x["name"], x["price"]), x["qty"],
                             datetime.fromisoformat(x["reserved_until"]), x["expired"]) for x in doc["lines"]])


@dataclass(frozen=True)
class HandedLine:
    """A cart line handed to an order: its units, the hold that keeps them, its name and price."""

    sku: str
    qty: int
    hold_id: str
    reserved_until: datetime
    name: str
    price: int


def gone_from_cart(hold: Hold) -> bool:
    """Whether a line's hold was ended by a change whose answer was lost (given back, or sold): the line's
    units are no longer the cart's. (A hold moved to an order the cart never recorded, its hand-over cut
    off, still keeps the line's units: the next checkout moves it on.)"""
    return hold.state in (RELEASED, COMMITTED)


def view_of(lines: list[Line], holds: dict[str, Hold], products: dict[str, Product]) -> CartView:
    """The cart as the shopper sees it, from its lines, their holds (the truth of their units) and the products."""
    shown = []
    for line in lines:
        hold = holds.get(line.hold_id)
        if hold is None:
            shown.append(ViewLine(line.sku, products.get(line.sku, MISSING_PRODUCT), line.qty,
                                  line.reserved_until, True))
        elif gone_from_cart(hold):
            continue  # the line's units were given back or sold by a change whose answer was lost
        else:
            shown.append(ViewLine(line.sku, products.get(line.sku, MISSING_PRODUCT), hold.qty,
                                  hold.expires_at, hold.state != ACTIVE))
    return CartView(shown)


def total_of(units: Iterable[tuple[str, int]], products: dict[str, Product]) -> int:
    """What (sku, qty) pairs cost at `products`' prices; a SKU without a product counts nothing."""
    return sum(products[sku].price * qty for sku, qty in units if sku in products)


def owner_of(user: str) -> str:
    """The inventory owner of a user's cart holds."""
    return f"cart:{user}"


def user_of(owner: str) -> str | None:
    """The user whose cart holds an owner's units; None for an owner that is not a cart."""
    return owner.removeprefix("cart:") if owner.startswith("cart:") else None


def change_key(user: str, change: str, step: str) -> str:
    """The inventory idempotency key of one step of a cart change: the same change (a retry, with the
    shopper's own Idempotency-Key) sends the same key, a new change a new one. A digest of the user and
    the change, so a shopper's key of any allowed length (255) still makes a key inventory takes."""
    digest = hashlib.sha256("\x00".join((user, change)).encode()).hexdigest()
    return f"cart:{digest}:{step}"
