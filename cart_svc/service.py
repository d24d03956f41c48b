"""The cart's rules: every line's units held in inventory, all or nothing, one user's changes at a time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timezone
from typing import Callable

import grpc
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from cart_svc import repository as repo
from cart_svc.repository import Line
from shop.cart.v1 import cart_pb2
from shop.catalog.v1 import catalog_pb2
from shop.inventory.v1 import inventory_pb2
from shop_runtime.clients import ServiceClient
from shop_runtime.clock import Clock
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.live_settings import LiveSettings
from shop_runtime.validation import MAX_TOTAL

MAX_LINE_QTY = 100
# Refusals that mean a line's hold can no longer be changed, so the line needs a new one.
_HOLD_GONE = {"HOLD_NOT_ACTIVE", "HOLD_NOT_OWNED", "HOLD_NOT_FOUND"}


@dataclass(frozen=True)
class Product:
    """What the cart shows of a product: its current name and price."""

    name: str
    price: int


@dataclass(frozen=True)
class CartView:
    """A user's cart with current names and prices."""

    lines: list[tuple[Line, Product, bool]]  # (line, product, expired)

    @property
    def total(self) -> int:
        """The sum of the lines' subtotals."""
        return sum(p.price * line.qty for line, p, _ in self.lines)


def owner_of(user: str) -> str:
    """The inventory owner of a user's cart holds."""
    return f"cart:{user}"


def _qty_limit(qty: int) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "QTY_LIMIT",
                        f"a line holds at most {MAX_LINE_QTY} units, this one would hold {qty}",
                        {"max": MAX_LINE_QTY, "qty": qty})


class Carts:
    """Carts in the cart schema; their holds in inventory; names and prices from the catalog."""

    def __init__(self, pool: AsyncConnectionPool, inventory: ServiceClient, catalog: ServiceClient,
                 live: LiveSettings, clock: Clock):
        self._pool = pool
        self._inventory = inventory
        self._catalog = catalog
        self._live = live
        self._clock = clock

    async def _products(self, skus: list[str]) -> dict[str, Product]:
        if not skus:
            return {}
        answer = await self._catalog.call("BatchGetProducts", catalog_pb2.BatchGetProductsRequest(skus=skus))
        return {p.sku: Product(p.name, p.price) for p in answer.products}

    async def _check_total(self, lines: list[Line], sku: str, qty: int, product: Product) -> None:
        others = [line for line in lines if line.sku != sku]
        prices = await self._products([line.sku for line in others])
        total = product.price * qty + sum(prices[line.sku].price * line.qty for line in others if line.sku in prices)
        if total > MAX_TOTAL:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "TOTAL_LIMIT",
                               f"a cart totals at most {MAX_TOTAL} IDR", {"max": MAX_TOTAL})

    async def _hold(self, conn: AsyncConnection, user: str, sku: str, qty: int, line: Line | None) -> None:
        """Makes the line hold exactly `qty` units: resizing its hold, or a new hold if it has none any more."""
        ttl = self._live.get("reservation_ttl_seconds")
        hold = None
        if line is not None:
            try:
                answer = await self._inventory.call("ResizeHold", inventory_pb2.ResizeHoldRequest(
                    hold_id=line.hold_id, qty=qty, ttl_seconds=ttl, owner=owner_of(user),
                    idempotency_key=str(uuid.uuid4())), user=user)
                hold = answer.hold
            except ServiceError as err:
                if err.reason not in _HOLD_GONE:
                    raise
        if hold is None:
            answer = await self._inventory.call("CreateHolds", inventory_pb2.CreateHoldsRequest(
                owner=owner_of(user), lines=[inventory_pb2.HoldLine(sku=sku, qty=qty)], ttl_seconds=ttl,
                idempotency_key=str(uuid.uuid4())), user=user)
            (hold,) = answer.holds
        added_at = line.added_at if line is not None else self._clock.now()
        reserved_until = hold.expires_at.ToDatetime(tzinfo=timezone.utc)
        await repo.put_line(conn, user, Line(sku, qty, hold.hold_id, reserved_until, added_at))

    async def _change(self, user: str, sku: str, qty_of: Callable[[Line | None], int]) -> CartView:
        product = (await self._products([sku])).get(sku)
        if product is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND", f"no product {sku!r}", {"sku": sku})
        async with self._pool.connection() as conn, conn.transaction():
            await repo.lock_user(conn, user)
            lines = await repo.lines(conn, user)
            line = next((x for x in lines if x.sku == sku), None)
            qty = qty_of(line)
            if qty > MAX_LINE_QTY:
                raise _qty_limit(qty)
            await self._check_total(lines, sku, qty, product)
            await self._hold(conn, user, sku, qty, line)
        return await self.view(user)

    async def add(self, user: str, sku: str, qty: int) -> CartView:
        """Adds `qty` units of `sku`, holding them; the line grows if it exists."""
        if not 1 <= qty <= MAX_LINE_QTY:
            raise invalid_argument("qty", f"qty must be within 1..{MAX_LINE_QTY}")
        if not sku:
            raise invalid_argument("sku", "sku is required")
        return await self._change(user, sku, lambda line: qty + (line.qty if line else 0))

    async def set_quantity(self, user: str, sku: str, qty: int) -> CartView:
        """Sets the line to exactly `qty` units; 0 removes it and gives its units back."""
        if not 0 <= qty <= MAX_LINE_QTY:
            raise invalid_argument("qty", f"qty must be within 0..{MAX_LINE_QTY}")
        if qty > 0:
            return await self._change(user, sku, lambda line: qty)
        async with self._pool.connection() as conn, conn.transaction():
            await repo.lock_user(conn, user)
            line = next((x for x in await repo.lines(conn, user) if x.sku == sku), None)
            if line is not None:
                try:
                    await self._inventory.call("ReleaseHolds", inventory_pb2.ReleaseHoldsRequest(
                        hold_ids=[line.hold_id], owner=owner_of(user), idempotency_key=str(uuid.uuid4())), user=user)
                except ServiceError as err:
                    if err.reason not in _HOLD_GONE:  # an expired hold has given its units back already
                        raise
                await repo.delete_lines(conn, user, [sku])
        return await self.view(user)

    async def view(self, user: str) -> CartView:
        """The cart with current names and prices; a line past its hold's expiry is marked expired."""
        async with self._pool.connection() as conn:
            lines = await repo.lines(conn, user)
        products = await self._products([line.sku for line in lines])
        now = self._clock.now()
        missing = Product(name="", price=0)  # a product since removed from the catalog
        return CartView([(line, products.get(line.sku, missing), line.reserved_until <= now) for line in lines])

    async def checkout(self, user: str, order_id: str, ttl_seconds: int) -> cart_pb2.CheckoutCartResponse:
        """Moves every line's hold to the order and empties the cart, or changes nothing."""
        if not order_id:
            raise invalid_argument("order_id", "order_id is required")
        async with self._pool.connection() as conn, conn.transaction():
            await repo.lock_user(conn, user)
            if (earlier := await repo.checkout(conn, order_id)) is not None:
                owner, stored = earlier
                if owner != user:
                    raise invalid_argument("order_id", "this order id belongs to another cart")
                return cart_pb2.CheckoutCartResponse.FromString(stored)
            lines = await repo.lines(conn, user)
            if not lines:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "CART_EMPTY", "the cart is empty")
            # Prices are fixed, and checked, before any hold moves: a refusal leaves the cart as it was.
            products = await self._products([line.sku for line in lines])
            if gone := [line.sku for line in lines if line.sku not in products]:
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND",
                                   "no longer in the catalog: " + ", ".join(gone), {"sku": gone[0]})
            if sum(products[line.sku].price * line.qty for line in lines) > MAX_TOTAL:
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "TOTAL_LIMIT",
                                   f"an order totals at most {MAX_TOTAL} IDR; lower a quantity", {"max": MAX_TOTAL})
            answer = await self._inventory.call("ExtendHolds", inventory_pb2.ExtendHoldsRequest(
                hold_ids=[line.hold_id for line in lines], owner=f"order:{order_id}", order_id=order_id,
                ttl_seconds=ttl_seconds, idempotency_key=f"checkout:{order_id}"), user=user)
            response = cart_pb2.CheckoutCartResponse(lines=[
                cart_pb2.CheckedOutLine(sku=line.sku, qty=line.qty, hold_id=hold.hold_id,
                                        reserved_until=hold.expires_at, name=products[line.sku].name,
                                        price=products[line.sku].price)
                for line, hold in zip(lines, answer.holds, strict=True)
            ])
            await repo.delete_lines(conn, user, [line.sku for line in lines])
            await repo.record_checkout(conn, order_id, user, response.SerializeToString())
            return response
