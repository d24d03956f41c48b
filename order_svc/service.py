"""The order rules: checkout takes the cart's holds, payment sells them, an unpaid order gives them back."""

from __future__ import annotations

import logging
import math
import uuid
from datetime import timedelta

import grpc
import psycopg
from psycopg_pool import AsyncConnectionPool

from order_svc import repository as repo
from order_svc.payments import PaymentProvider, ProviderUnavailable
from order_svc.repository import Item, OrderRecord, PaymentAttempt
from shop.cart.v1 import cart_pb2
from shop.catalog.v1 import catalog_pb2
from shop.inventory.v1 import inventory_pb2
from shop_runtime import idempotency
from shop_runtime.clients import ServiceClient
from shop_runtime.clock import Clock
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.live_settings import LiveSettings
from shop_runtime.validation import MAX_TOTAL, page_and_limit

_LOGGER = logging.getLogger(__name__)

CURRENCY = "IDR"
# A payment started inside the window keeps the units this much longer while the provider answers.
PAYMENT_GRACE_SECONDS = 60
# Order ids of checkouts with an idempotency key derive from (user, key), so retries converge.
_CHECKOUT_NAMESPACE = uuid.UUID("6f1c2a3e-7d4b-4b8e-9a51-2c0d8e4f5a61")


def _error(code: grpc.StatusCode, reason: str, message: str, **metadata) -> ServiceError:
    return ServiceError(code, reason, message, metadata)


def _not_found(order_id: str) -> ServiceError:
    return _error(grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND", f"no order {order_id}", order_id=order_id)


def _expired(order_id: str) -> ServiceError:
    return _error(grpc.StatusCode.ABORTED, "ORDER_EXPIRED", "the payment window of this order has closed",
                  order_id=order_id)


def _order_uuid(order_id: str) -> str | None:
    try:
        return str(uuid.UUID(order_id))
    except ValueError:
        return None


class Orders:
    """Orders in the orders schema; their units held and sold through inventory, taken from the cart."""

    def __init__(self, pool: AsyncConnectionPool, dsn: str, cart: ServiceClient, catalog: ServiceClient,
                 inventory: ServiceClient, provider: PaymentProvider, live: LiveSettings, clock: Clock):
        self._pool = pool
        self._dsn = dsn
        self._cart = cart
        self._catalog = catalog
        self._inventory = inventory
        self._provider = provider
        self._live = live
        self._clock = clock

    def _side(self):
        """A connection of its own, committing at once: for what must be stored while a payment holds the
        order's lock. Not from the pool, which concurrent payments of the same order may all be waiting in."""
        return psycopg.AsyncConnection.connect(self._dsn, autocommit=True)

    # --- checkout -----------------------------------------------------------------------------

    async def checkout(self, user: str, key: str) -> OrderRecord:
        """Turns the user's cart into an order awaiting payment; the same key answers the same order."""
        key = idempotency.check_key(key)
        if key:
            async with self._pool.connection() as conn:
                if (earlier := await repo.order_by_checkout_key(conn, user, key)) is not None:
                    return earlier
        order_id = str(uuid.uuid5(_CHECKOUT_NAMESPACE, f"{user}\x00{key}") if key else uuid.uuid4())
        window = self._live.get("payment_window_seconds")
        # The window starts before the holds move, so they never run out before pay_before does.
        now = self._clock.now()
        handed = await self._cart.call("CheckoutCart", cart_pb2.CheckoutCartRequest(order_id=order_id, ttl_seconds=window),
                                       user=user)
        products = await self._catalog.call("BatchGetProducts", catalog_pb2.BatchGetProductsRequest(
            skus=[line.sku for line in handed.lines]))
        by_sku = {p.sku: p for p in products.products}
        items = [Item(line.sku, by_sku[line.sku].name if line.sku in by_sku else line.sku,
                      by_sku[line.sku].price if line.sku in by_sku else 0, line.qty, line.hold_id)
                 for line in handed.lines]
        total = sum(i.price * i.qty for i in items)
        if total > MAX_TOTAL:
            raise _error(grpc.StatusCode.INVALID_ARGUMENT, "TOTAL_LIMIT", f"an order totals at most {MAX_TOTAL} IDR",
                         max=MAX_TOTAL)
        order = OrderRecord(order_id, user, "PENDING_PAYMENT", total, CURRENCY, now + timedelta(seconds=window),
                            now, None, None, items)
        async with self._pool.connection() as conn, conn.transaction():
            await repo.insert_order(conn, order, key or None)
            return await repo.get_order(conn, order_id, user)

    # --- payment ------------------------------------------------------------------------------

    async def pay(self, user: str, key: str, order_id: str, amount: int, method: str, token: str) -> OrderRecord:
        """Charges the order's total and sells its held units; a key answers its first answer again."""
        if not key:
            raise _error(grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REQUIRED",
                         "POST /payment needs an Idempotency-Key header")
        key = idempotency.check_key(key)
        if (order_uuid := _order_uuid(order_id)) is None:
            raise _not_found(order_id)
        request_hash = idempotency.fingerprint("pay", order_uuid, amount, method, token)
        async with self._pool.connection() as conn, conn.transaction():
            # The order's row lock makes concurrent payments of one order take turns.
            order = await repo.get_order(conn, order_uuid, user, for_update=True)
            if order is None:
                raise _not_found(order_id)
            now = self._clock.now()
            earlier = await repo.attempt(conn, user, key)
            if earlier is not None:
                if earlier.request_hash != request_hash:
                    raise _error(grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_REUSED",
                                 "this idempotency key was used for a different payment")
                if earlier.state == "SUCCEEDED":
                    return order
                if earlier.state == "DECLINED":
                    raise self._declined(order_id)
                if earlier.state == "REFUNDED" or order.status == "PAID":
                    # An attempt cut off after charging, overtaken by another payment: give the money back.
                    await self._refund(earlier.payment_id)
                    raise self._already_paid(order_id) if order.status == "PAID" else _expired(order_id)
                attempt = earlier  # cut off between the provider and here: resume it
            else:
                if order.status == "PAID":
                    raise self._already_paid(order_id)
                if order.status_at(now) == "EXPIRED":
                    raise _expired(order_id)
                if amount != order.total:
                    raise _error(grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_MISMATCH",
                                 f"the order totals {order.total}, not {amount}", total=order.total)
                attempt = PaymentAttempt(request_hash, order_uuid, f"pay_{uuid.uuid4().hex}", "PENDING")
                # Committed before the provider is called: a crash after the charge cannot lead to a second one.
                async with await self._side() as side:
                    await repo.insert_attempt(side, user, key, attempt)
            if order.status_at(now) == "EXPIRED":
                await self._refund(attempt.payment_id)
                raise _expired(order_id)
            holds = await self._keep_units(order, attempt.payment_id, now, user)
            await repo.set_hold_ids(conn, order_uuid, holds)
            try:
                charge = await self._provider.charge(attempt.payment_id, order.total, order.currency, method, token)
            except ProviderUnavailable as err:
                # The attempt stays PENDING: a retry with the same key asks again for the same payment id.
                raise _error(grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_UNAVAILABLE",
                             "the payment provider did not answer; retry with the same Idempotency-Key",
                             order_id=order_id) from err
            if not charge.approved:
                async with await self._side() as side:
                    await repo.set_attempt_state(side, attempt.payment_id, "DECLINED")
                raise self._declined(order_id, charge.reason)
            await self._inventory.call("CommitHolds", inventory_pb2.CommitHoldsRequest(
                hold_ids=holds, idempotency_key=f"pay:{order_uuid}"), user=user)
            await repo.mark_paid(conn, order_uuid, attempt.payment_id, self._clock.now())
            await repo.set_attempt_state(conn, attempt.payment_id, "SUCCEEDED")
            sales = catalog_pb2.RecordSalesRequest(order_id=order_uuid, lines=[
                catalog_pb2.SaleLine(sku=i.sku, qty=i.qty) for i in order.items])
            await repo.add_outbox(conn, order_uuid, sales.SerializeToString())
            paid = await repo.get_order(conn, order_uuid, user)
        await self.deliver_sales()
        return paid

    async def _keep_units(self, order: OrderRecord, payment_id: str, now, user: str) -> list[str]:
        """Keeps the order's units past the provider's answer; an order whose units are gone is expired."""
        ttl = max(1, math.ceil((order.pay_before - now).total_seconds())) + PAYMENT_GRACE_SECONDS
        try:
            answer = await self._inventory.call("ExtendHolds", inventory_pb2.ExtendHoldsRequest(
                hold_ids=[i.hold_id for i in order.items], owner=f"order:{order.id}", order_id=order.id,
                ttl_seconds=ttl, idempotency_key=f"pay-hold:{payment_id}"), user=user)
        except ServiceError as err:
            if err.reason in ("OUT_OF_STOCK", "HOLD_NOT_ACTIVE", "HOLD_NOT_FOUND"):
                await self._refund(payment_id)
                raise _expired(order.id) from err
            raise
        return [h.hold_id for h in answer.holds]

    async def _refund(self, payment_id: str) -> None:
        await self._provider.refund(payment_id)
        async with await self._side() as side:
            await repo.set_attempt_state(side, payment_id, "REFUNDED")

    @staticmethod
    def _declined(order_id: str, why: str = "card declined") -> ServiceError:
        return _error(grpc.StatusCode.INVALID_ARGUMENT, "PAYMENT_DECLINED",
                      f"the payment was declined ({why}); the order stays payable until pay_before", order_id=order_id)

    @staticmethod
    def _already_paid(order_id: str) -> ServiceError:
        return _error(grpc.StatusCode.ABORTED, "ALREADY_PAID", "this order is paid already", order_id=order_id)

    # --- reading ------------------------------------------------------------------------------

    async def get(self, user: str, order_id: str) -> OrderRecord:
        """One of the user's orders; anyone else's is NOT_FOUND, exactly like a missing one."""
        if (order_uuid := _order_uuid(order_id)) is None:
            raise _not_found(order_id)
        async with self._pool.connection() as conn:
            order = await repo.get_order(conn, order_uuid, user)
        if order is None:
            raise _not_found(order_id)
        return order

    async def list(self, user: str, page: int | None, limit: int | None) -> tuple[list[OrderRecord], int, int, int]:
        """A page of the user's orders, newest first: (orders, page, limit, total)."""
        page, limit = page_and_limit(page, limit)
        async with self._pool.connection() as conn:
            orders, total = await repo.list_orders(conn, user, limit, (page - 1) * limit)
        return orders, page, limit, total

    def now(self):
        """The service's clock."""
        return self._clock.now()

    # --- background -------------------------------------------------------------------------

    async def expire_due(self, limit: int = 100) -> int:
        """Expires unpaid orders past their window and gives their units back; safe in every replica."""
        expired = 0
        for _ in range(limit):
            async with self._pool.connection() as conn, conn.transaction():
                due = await repo.due_orders(conn, self._clock.now(), 1)
                if not due:
                    break
                ((order_id, user),) = due
                order = await repo.get_order(conn, order_id, user)
                try:
                    await self._inventory.call("ReleaseHolds", inventory_pb2.ReleaseHoldsRequest(
                        hold_ids=[i.hold_id for i in order.items], owner=f"order:{order_id}",
                        idempotency_key=f"expire:{order_id}"))
                except ServiceError as err:
                    if err.reason not in ("HOLD_NOT_ACTIVE", "HOLD_NOT_OWNED", "HOLD_NOT_FOUND"):
                        raise
                    # Already expired in inventory: its units are back anyway.
                await repo.mark_expired(conn, order_id)
                expired += 1
        return expired

    async def deliver_sales(self, limit: int = 100) -> int:
        """Sends paid orders' units sold to the catalog (each once); what fails stays for the next pass."""
        delivered = 0
        async with self._pool.connection() as conn, conn.transaction():
            for order_id, payload in await repo.pending_outbox(conn, limit):
                try:
                    await self._catalog.call("RecordSales", catalog_pb2.RecordSalesRequest.FromString(payload))
                except ServiceError as err:
                    _LOGGER.warning("units sold of order %s not delivered yet: %s", order_id, err.message)
                    break
                await repo.mark_delivered(conn, order_id)
                delivered += 1
        return delivered
