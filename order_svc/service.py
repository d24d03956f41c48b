"""The order rules: checkout takes the cart's holds, payment sells them, an unpaid order gives them back."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from datetime import timezone

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
from shop_runtime.errors import ServiceError
from shop_runtime.live_settings import LiveSettings
from shop_runtime.validation import page_and_limit

_LOGGER = logging.getLogger(__name__)

CURRENCY = "IDR"
# A payment started inside the window keeps the units this much longer while the provider answers.
PAYMENT_GRACE_SECONDS = 60
# How long the provider may take before the attempt counts as unanswered (well inside the grace).
PROVIDER_TIMEOUT_SECONDS = 15.0
# The longest hold inventory grants.
MAX_HOLD_SECONDS = 86_400
# Inventory's refusals that mean an order's units are no longer held for it.
_HOLDS_GONE = ("OUT_OF_STOCK", "HOLD_NOT_ACTIVE", "HOLD_NOT_FOUND", "HOLD_NOT_OWNED")
# Order ids of checkouts with an idempotency key derive from (user, key), so retries converge.
_CHECKOUT_NAMESPACE = uuid.UUID("6f1c2a3e-7d4b-4b8e-9a51-2c0d8e4f5a61")


def _error(code: grpc.StatusCode, reason: str, message: str, **metadata) -> ServiceError:
    return ServiceError(code, reason, message, metadata)


def _not_found(order_id: str) -> ServiceError:
    return _error(grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND", f"no order {order_id}", order_id=order_id)


def _expired(order_id: str) -> ServiceError:
    return _error(grpc.StatusCode.ABORTED, "ORDER_EXPIRED", "the payment window of this order has closed",
                  order_id=order_id)


def _reused() -> ServiceError:
    return _error(grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_REUSED",
                  "this idempotency key was used for a different payment")


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
        now = self._clock.now()
        # The cart fixes names and prices and refuses what cannot be ordered before any hold moves.
        handed = await self._cart.call("CheckoutCart", cart_pb2.CheckoutCartRequest(order_id=order_id, ttl_seconds=window),
                                       user=user)
        items = [Item(line.sku, line.name, line.price, line.qty, line.hold_id) for line in handed.lines]
        # The window ends when the first hold runs out: a replayed hand-over keeps its first expiry.
        pay_before = min(line.reserved_until.ToDatetime(tzinfo=timezone.utc) for line in handed.lines)
        order = OrderRecord(order_id, user, "PENDING_PAYMENT", sum(i.price * i.qty for i in items), CURRENCY,
                            pay_before, min(now, pay_before), None, None, items)
        async with self._pool.connection() as conn, conn.transaction():
            await repo.insert_order(conn, order, key or None)
            return await repo.get_order(conn, order_id, user)

    # --- payment ------------------------------------------------------------------------------

    async def pay(self, user: str, key: str, order_id: str, amount: int, method: str, token: str) -> OrderRecord:
        """Charges the order's total and sells its held units; a key answers its first answer again.

        At most one charge stands per order: the attempt is committed before the provider is called,
        a retry resumes it with the same payment id (charged at most once by the provider), an attempt
        left pending under another key is refunded before a new one, and a charge whose units cannot
        be sold is refunded.
        """
        if not key:
            raise _error(grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REQUIRED",
                         "POST /payment needs an Idempotency-Key header")
        key = idempotency.check_key(key)
        if (order_uuid := _order_uuid(order_id)) is None:
            raise _not_found(order_id)
        request_hash = idempotency.fingerprint("pay", order_uuid, amount, method, token)
        async with self._pool.connection() as conn, conn.transaction():
            # The order's row lock makes payments of one order (and its expiry) take turns.
            order = await repo.get_order(conn, order_uuid, user, for_update=True)
            if order is None:
                raise _not_found(order_id)
            now = self._clock.now()
            attempt = await repo.attempt(conn, user, key)
            if attempt is not None:
                if attempt.request_hash != request_hash:
                    raise _reused()
                if attempt.state == "SUCCEEDED":
                    return order
                if attempt.state == "DECLINED":
                    raise self._declined(order_id)
                if attempt.state == "REFUNDED":
                    raise self._already_paid(order_id) if order.status == "PAID" else _error(
                        grpc.StatusCode.ABORTED, "PAYMENT_SUPERSEDED",
                        "this payment was cancelled and refunded; pay with a new Idempotency-Key", order_id=order_id)
                if order.status == "PAID":  # paid under another key meanwhile: this attempt's charge goes back
                    await self._refund(attempt.payment_id)
                    raise self._already_paid(order_id)
                # PENDING: cut off between the provider and here; resumed below with its own payment id.
            else:
                if order.status == "PAID":
                    raise self._already_paid(order_id)
                if order.status_at(now) == "EXPIRED":
                    raise _expired(order_id)
                if amount != order.total:
                    raise _error(grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_MISMATCH",
                                 f"the order totals {order.total}, not {amount}", total=order.total)
                async with await self._side() as side:
                    # An earlier attempt under another key may have been charged and cut off: refund it first.
                    for other in await repo.pending_attempts(side, order_uuid):
                        await self._refund(other)
                    attempt = PaymentAttempt(request_hash, order_uuid, f"pay_{uuid.uuid4().hex}", "PENDING")
                    try:
                        # Committed before the provider is called: a crash after the charge cannot lead to a second.
                        await repo.insert_attempt(side, user, key, attempt)
                    except psycopg.errors.UniqueViolation:  # the same key, at the same moment, for another order
                        raise _reused() from None
            if order.status_at(now) == "EXPIRED":
                await self._refund(attempt.payment_id)
                raise _expired(order_id)
            holds = await self._keep_units(order, attempt.payment_id, user)
            try:
                charge = await asyncio.wait_for(
                    self._provider.charge(attempt.payment_id, order.total, order.currency, method, token),
                    PROVIDER_TIMEOUT_SECONDS)
            except (ProviderUnavailable, asyncio.TimeoutError) as err:
                # The attempt stays PENDING: a retry with the same key asks again for the same payment id.
                raise _error(grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_UNAVAILABLE",
                             "the payment provider did not answer; retry with the same Idempotency-Key",
                             order_id=order_id) from err
            if not charge.approved:
                async with await self._side() as side:
                    await repo.set_attempt_state(side, attempt.payment_id, "DECLINED")
                raise self._declined(order_id, charge.reason)
            try:
                await self._inventory.call("CommitHolds", inventory_pb2.CommitHoldsRequest(
                    hold_ids=holds, idempotency_key=f"pay:{order_uuid}"), user=user)
            except ServiceError as err:
                if err.reason not in _HOLDS_GONE:
                    raise  # e.g. inventory unavailable: a retry with the key resumes this attempt
                await self._refund(attempt.payment_id)
                raise _expired(order_id) from err
            await self._record_paid(conn, order, attempt.payment_id)
            paid = await repo.get_order(conn, order_uuid, user)
        await self.deliver_sales()
        return paid

    async def _record_paid(self, conn, order: OrderRecord, payment_id: str) -> None:
        """The order is paid: its status, its attempt, and its units sold queued for the catalog."""
        await repo.mark_paid(conn, order.id, payment_id, self._clock.now())
        await repo.set_attempt_state(conn, payment_id, "SUCCEEDED")
        sales = catalog_pb2.RecordSalesRequest(order_id=order.id, lines=[
            catalog_pb2.SaleLine(sku=i.sku, qty=i.qty) for i in order.items])
        await repo.add_outbox(conn, order.id, sales.SerializeToString())

    async def _keep_units(self, order: OrderRecord, payment_id: str, user: str) -> list[str]:
        """Keeps the order's units past the provider's answer; an order whose units are gone is expired.

        The time to live depends only on the stored order, so a retry of the attempt replays the same
        (idempotent) inventory call instead of being refused as a reused key.
        """
        window = max(1, math.ceil((order.pay_before - order.created_at).total_seconds()))
        ttl = min(window + PAYMENT_GRACE_SECONDS, MAX_HOLD_SECONDS)
        try:
            answer = await self._inventory.call("ExtendHolds", inventory_pb2.ExtendHoldsRequest(
                hold_ids=[i.hold_id for i in order.items], owner=f"order:{order.id}", order_id=order.id,
                ttl_seconds=ttl, idempotency_key=f"pay-hold:{payment_id}"), user=user)
        except ServiceError as err:
            if err.reason in _HOLDS_GONE:
                await self._refund(payment_id)
                raise _expired(order.id) from err
            raise
        holds = [h.hold_id for h in answer.holds]
        if holds != [i.hold_id for i in order.items]:
            # Recorded at once, on its own connection: a decline rolls the payment back, not this.
            async with await self._side() as side:
                await repo.set_hold_ids(side, order.id, holds)
        return holds

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
        """Ends unpaid orders past their window: units back, cut-off charges refunded; safe in every replica.

        An order whose units were sold by a payment cut off before it was recorded is finished as
        paid instead: the charge happened before the units were sold.
        """
        ended = 0
        for _ in range(limit):
            async with self._pool.connection() as conn, conn.transaction():
                due = await repo.due_orders(conn, self._clock.now(), 1)
                if not due:
                    break
                ((order_id, user),) = due
                order = await repo.get_order(conn, order_id, user)
                pending = await repo.pending_attempts(conn, order_id)
                hold_ids = [i.hold_id for i in order.items]
                found = (await self._inventory.call("GetHolds", inventory_pb2.GetHoldsRequest(hold_ids=hold_ids))).holds
                if pending and len(found) == len(hold_ids) and all(
                        h.state == inventory_pb2.HOLD_STATE_COMMITTED for h in found):
                    _LOGGER.warning("order %s: units sold by payment %s, recording it as paid", order_id, pending[-1])
                    await self._record_paid(conn, order, pending[-1])
                    ended += 1
                    continue
                for hold_id in hold_ids:  # one by one: a hold that already expired does not keep the others
                    try:
                        await self._inventory.call("ReleaseHolds", inventory_pb2.ReleaseHoldsRequest(
                            hold_ids=[hold_id], owner=f"order:{order_id}", idempotency_key=f"expire:{hold_id}"))
                    except ServiceError as err:
                        if err.reason not in _HOLDS_GONE:
                            raise
                        # Already expired in inventory: its units are back anyway.
                for payment_id in pending:
                    await self._refund(payment_id)
                await repo.mark_expired(conn, order_id)
                ended += 1
        return ended

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
