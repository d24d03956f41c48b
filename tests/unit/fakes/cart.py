"""The cart in memory, as the order sees it through CartClient."""

from __future__ import annotations

from cart_svc.client import CART_EMPTY, CHECKOUT_NOT_FOUND, HandedLine
from inventory_svc.client import Hold
from shop_runtime.reasons import refuse
from tests.unit.fakes.inventory import FakeInventory
from tests.unit.fakes.losses import Losses


class FakeCart(Losses):
    """The cart as the order sees it: lines whose units are held in the (fake) inventory for `cart:<user>`,
    handed over once per order id (a repeat answers the stored hand-over)."""

    def __init__(self, inventory: FakeInventory):
        super().__init__("cart")
        self.inventory = inventory
        self.lines: dict[str, list[tuple[str, str, int, str]]] = {}  # user -> (sku, name, price, hold id)
        self.handed: dict[str, tuple[str, list[HandedLine]]] = {}  # order id -> (user, answer)
        self.hand_over_calls = 0

    async def put(self, user: str, sku: str, qty: int, name: str, price: int, ttl_seconds: int = 600) -> Hold:
        """Adds a line to the user's cart, its units held in inventory at `price` (the regular price; a live sale's
        price when the inventory has one)."""
        (hold,) = await self.inventory.hold(f"cart:{user}", {sku: qty}, ttl_seconds, "", prices={sku: price})
        self.lines.setdefault(user, []).append((sku, name, price, hold.hold_id))
        return hold

    async def hand_over(self, user: str, order_id: str, ttl_seconds: int, *,
                        replay_only: bool = False) -> list[HandedLine]:
        self.hand_over_calls += 1

        async def work() -> list[HandedLine]:
            if order_id in self.handed:
                return self.handed[order_id][1]
            if replay_only:
                raise refuse(CHECKOUT_NOT_FOUND, f"no cart was handed over to {order_id}", dict(order_id=order_id))
            lines = self.lines.get(user)
            if not lines:
                raise refuse(CART_EMPTY, "the cart is empty")
            holds = await self.inventory.extend([x[3] for x in lines], f"order:{order_id}", order_id, ttl_seconds,
                                                f"checkout:{order_id}", user=user)
            # As the cart: each line at its hold's price and campaign.
            answer = [HandedLine(sku, h.qty, h.hold_id, h.expires_at, name, h.price or price, h.campaign_id)
                      for (sku, name, price, _), h in zip(lines, holds, strict=True)]
            self.handed[order_id] = (user, answer)
            self.lines[user] = []
            return answer

        return await self._lossy("hand_over", work)
