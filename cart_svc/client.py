"""The cart as the order service sees it: the hand-over of a cart to an order."""

from __future__ import annotations

from cart_svc.messages import handed_lines
from cart_svc.model import HandedLine as HandedLine, owner_of
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop_runtime.clients import ServiceClient

CART_EMPTY = "CART_EMPTY"
CHECKOUT_NOT_FOUND = "CHECKOUT_NOT_FOUND"

# The service's stub, for Deps.client.
STUB = cart_pb2_grpc.CartServiceStub


def cart_owner(user: str) -> str:
    """The inventory owner of the user's cart holds."""
    return owner_of(user)


class CartClient:
    """Calls the cart."""

    def __init__(self, service: ServiceClient):
        self._service = service

    async def hand_over(self, user: str, order_id: str, ttl_seconds: int, *,
                        replay_only: bool = False) -> list[HandedLine]:
        """Hands the user's cart to `order_id` (the order id is the idempotency key: a retry answers the
        same); with replay_only, only an earlier hand-over is answered (CHECKOUT_NOT_FOUND if none)."""
        answer = await self._service.call("CheckoutCart", cart_pb2.CheckoutCartRequest(
            order_id=order_id, ttl_seconds=ttl_seconds, replay_only=replay_only), user=user, idempotent=True)
        return handed_lines(answer)
