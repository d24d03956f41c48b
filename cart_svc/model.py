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
    # The cart's record of its hold's unit price (a hold keeps its price for life, so this is never stale for
    # the hold the line names); 0 when unknown (a line written before prices were held, or a hold without a
    # price). Only the cart's total cap reads it, before inventory is asked; what is shown comes from the hold.
    price: int = 0


# A product since removed from the catalog.
MISSING_PRODUCT = Product(name="", price=0)


def held_price(hold: Hold | None, product: Product) -> int:
    """The unit price a line's units are shown and ordered at: its hold's. A hold made before prices were held
    with the units has price 0: such a line is shown at the catalog's current price, the one fallback."""
    return hold.price if hold is not None and hold.price > 0 else product.price


@dataclass(frozen=True)
class ViewLine:
    """A line as the shopper sees it: units, expiry, price and campaign from the hold, the name from the catalog."""

    sku: str
    name: str
    price: int
    qty: int
    reserved_until: datetime
    expired: bool
    # The campaign whose quota the units were held from; "" for regular stock.
    campaign_id: str = ""

    @property
    def subtotal(self) -> int:
        """price times qty."""
        return self.price * self.qty


@dataclass(frozen=True)
class CartView:
    """A user's cart: current names, the prices its units were held at."""

    lines: list[ViewLine]

    @property
    def total(self) -> int:
        """The sum of the lines' subtotals."""
        return sum(line.subtotal for line in self.lines)

    def to_json(self) -> dict:
        """The view as stored for the replay of an idempotent change."""
        return {"lines": [{"sku": x.sku, "name": x.name, "price": x.price, "qty": x.qty,
                           "reserved_until": x.reserved_until.isoformat(), "expired": x.expired,
                           "campaign_id": x.campaign_id} for x in self.lines]}

    @classmethod
    def from_json(cls, doc: dict) -> "CartView":
        """A view stored by to_json (one stored before lines had campaigns has none: regular lines)."""
        return cls([ViewLine(x["sku"], x["name"], x["price"], x["qty"], datetime.fromisoformat(x["reserved_until"]),
                             x["expired"], x.get("campaign_id", "")) for x in doc["lines"]])


@dataclass(frozen=True)
class HandedLine:
    """A cart line handed to an order: its units, the hold that keeps them, its name, and the price and campaign
    its units were held at."""

    sku: str
    qty: int
    hold_id: str
    reserved_until: datetime
    name: str
    price: int
    campaign_id: str = ""


def handed_line(line: Line, moved: Hold, before: Hold | None, product: Product) -> HandedLine:
    """A line handed to an order: its units and expiry from the hold that now keeps them, its name from the
    catalog, its price and campaign from that hold (from the hold it replaced when inventory answered none, as
    for a hold made before prices were held; at neither, the catalog's price, as the cart showed it)."""
    source = moved if moved.price > 0 else before
    return HandedLine(line.sku, moved.qty, moved.hold_id, moved.expires_at, product.name, held_price(source, product),
                      source.campaign_id if source is not None else "")


def gone_from_cart(hold: Hold) -> bool:
    """Whether a line's hold was ended by a change whose answer was lost (given back, or sold): the line's
    units are no longer the cart's. (A hold moved to an order the cart never recorded, its hand-over cut
    off, still keeps the line's units: the next checkout moves it on.)"""
    return hold.state in (RELEASED, COMMITTED)


def view_of(lines: list[Line], holds: dict[str, Hold], products: dict[str, Product]) -> CartView:
    """The cart as the shopper sees it, from its lines, their holds (the truth of their units and prices) and the
    products (their names)."""
    shown = []
    for line in lines:
        hold = holds.get(line.hold_id)
        product = products.get(line.sku, MISSING_PRODUCT)
        if hold is None:
            # Unknown to inventory: no held price to show, so the line's recorded one, else the catalog's.
            shown.append(ViewLine(line.sku, product.name, line.price or product.price, line.qty,
                                  line.reserved_until, True))
        elif gone_from_cart(hold):
            continue  # the line's units were given back or sold by a change whose answer was lost
        else:
            shown.append(ViewLine(line.sku, product.name, held_price(hold, product), hold.qty, hold.expires_at,
                                  hold.state != ACTIVE, hold.campaign_id))
    return CartView(shown)


def total_of(units: Iterable[tuple[str, int, int]], products: dict[str, Product]) -> int:
    """What (sku, qty, price) triples cost: each at its own price when above 0 (a held price), else at `products`'
    price; a SKU without a product or price counts nothing."""
    return sum((price or (products[sku].price if sku in products else 0)) * qty for sku, qty, price in units)


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
