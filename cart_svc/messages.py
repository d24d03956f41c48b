"""The cart's hand-over to an order as a message: CheckoutCart's answer, also the form a hand-over is stored in."""

from __future__ import annotations

from datetime import timezone

from cart_svc.model import HandedLine
from shop.cart.v1 import cart_pb2


def checkout_pb(lines: list[HandedLine]) -> cart_pb2.CheckoutCartResponse:
    """A hand-over as CheckoutCart's answer."""
    response = cart_pb2.CheckoutCartResponse(lines=[
        cart_pb2.CheckedOutLine(sku=x.sku, qty=x.qty, hold_id=x.hold_id, name=x.name, price=x.price,
                                campaign_id=x.campaign_id) for x in lines])
    for message, line in zip(response.lines, lines, strict=True):
        message.reserved_until.FromDatetime(line.reserved_until)
    return response


def handed_lines(message: cart_pb2.CheckoutCartResponse) -> list[HandedLine]:
    """The hand-over a CheckoutCart answer carries (one stored before lines had campaigns: regular lines)."""
    return [HandedLine(x.sku, x.qty, x.hold_id, x.reserved_until.ToDatetime(tzinfo=timezone.utc), x.name, x.price,
                       x.campaign_id) for x in message.lines]
