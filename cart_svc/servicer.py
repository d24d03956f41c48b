"""The cart's gRPC face: messages in, calls to the service layer, messages out."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from cart_svc.messages import checkout_pb
from cart_svc.model import CartView
from cart_svc.service import Carts
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop_runtime.calls import idempotency_key, require_user
from shop_runtime.validation import CURRENCY


def cart_pb(view: CartView) -> cart_pb2.Cart:
    """A cart as a message."""
    items = []
    for line in view.lines:
        until = timestamp_pb2.Timestamp()
        until.FromDatetime(line.reserved_until)
        items.append(cart_pb2.CartLine(sku=line.sku, name=line.name, price=line.price, qty=line.qty,
                                       subtotal=line.subtotal, reserved_until=until, expired=line.expired,
                                       campaign_id=line.campaign_id))
    return cart_pb2.Cart(items=items, total=view.total, currency=CURRENCY)


class CartServicer(cart_pb2_grpc.CartServiceServicer):
    """Serves shop.cart.v1.CartService for the user the gateway named."""

    def __init__(self, carts: Carts):
        self._carts = carts

    async def AddItem(self, request, context):
        return cart_pb(await self._carts.add(require_user(context), request.sku, request.qty,
                                             idempotency_key(context), expected_price=request.expected_price))

    async def SetItemQuantity(self, request, context):
        return cart_pb(await self._carts.set_quantity(require_user(context), request.sku, request.qty,
                                                      idempotency_key(context),
                                                      expected_price=request.expected_price))

    async def GetCart(self, request, context):
        return cart_pb(await self._carts.view(require_user(context)))

    async def CheckoutCart(self, request, context):
        return checkout_pb(await self._carts.checkout(require_user(context), request.order_id, request.ttl_seconds,
                                                      request.replay_only))
