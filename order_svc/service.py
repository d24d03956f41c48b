"""The order rules: checkout takes the cart's holds, payment sells them; the repairs are order_svc.repair's."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import replace

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from cart_svc.client import CART_EMPTY, CartClient
from catalog_svc.client import PRODUCT_NOT_FOUND, CatalogClient
from inventory_svc.client import COMMITTED, OUT_OF_STOCK, InventoryClient
from order_svc import repository as repo
from order_svc.model import (DECLINED, EXPIRED, HOLDS_GONE, PAID, PENDING, PENDING_PAYMENT, REFUNDED, SALE_ENDED,
                             SALE_SOLD_OUT, SUCCEEDED, OrderRecord, PaymentAttempt, as_order_uuid, order_of, sold)
from order_svc.payments import Charge, PaymentProvider, ProviderUnavailable
from order_svc.repair import RECONCILE_AGE_SECONDS, Repairs
from shop.catalog.v1 import catalog_pb2
from shop_runtime import deadlines, faults, idempotency
from shop_runtime.clock import Clock
from shop_runtime.errors import ServiceError
from shop_runtime.live_settings import LiveSettings
from shop_runtime import metrics
from shop_runtime.reasons import refuse
from shop_runtime.validation import page_and_limit

_LOGGER = logging.getLogger(__name__)

# How long the provider may take before the attempt counts as unanswered (well inside the grace).
PROVIDER_TIMEOUT_SECONDS = 15.0
# Order ids of checkouts with an idempotency key derive from (user, key), so retries converge.
_CHECKOUT_NAMESPACE = uuid.UUID("6f1c2a3e-7d4b-4b8e-9a51-2c0d8e4f5a61")
# The cart's refusals of a hand-over that leave the cart as it was (anything else is left to the reconciler,
# which asks the cart what happened). An expired sale line that cannot be held again from its quota (SALE_ENDED,
# SALE_SOLD_OUT) is refused by inventory's all-or-nothing move, before any hold moved, as OUT_OF_STOCK is.
_NOT_HANDED_OVER = frozenset({CART_EMPTY, OUT_OF_STOCK, SALE_ENDED, SALE_SOLD_OUT, PRODUCT_NOT_FOUND, "TOTAL_LIMIT",
                              "INVALID_ARGUMENT"})


def _not_found(order_id: str) -> ServiceError:
    return refuse("ORDER_NOT_FOUND", f"no order {order_id}", {"order_id": order_id})


def _expired(order_id: str) -> ServiceError:
    return refuse("ORDER_EXPIRED", "the payment window of this order has closed", {"order_id": order_id})


def _reused() -> ServiceError:
    return refuse("IDEMPOTENCY_KEY_REUSED", "this idempotency key was used for a different payment")


def _provider_unavailable(order_id: str) -> ServiceError:
    return refuse("PAYMENT_PROVIDER_UNAVAILABLE",
                  "the payment provider did not answer; retry with the same Idempotency-Key", {"order_id": order_id})


def _declined(order_id: str, why: str = "card declined") -> ServiceError:
    return refuse("PAYMENT_DECLINED", f"the payment was declined ({why}); the order stays payable until pay_before",
                  {"order_id": order_id})


def _already_paid(order_id: str) -> ServiceError:
    return refuse("ALREADY_PAID", "this order is paid already", {"order_id": order_id})


class _SoldMeanwhile(Exception):
    """The order's units were sold by an earlier attempt while this one (`payment_id`) was starting."""

    def __init__(self, payment_id: str):
        super().__init__(payment_id)
        self.payment_id = payment_id


def _attempt_owner(order_id: str, payment_id: str) -> str:
    """The inventory owner of an order's holds while a payment attempt holds them (its commit requires it)."""
    return f"order:{order_id}/{payment_id}"


class Orders:
    """Orders in the orders schema; their units held and sold through inventory, taken from the cart.

    Every step that crosses to another service carries a key derived from the order or the payment
    attempt, so a retry after a lost answer is the same step: the hand-over is keyed by the order id,
    keeping the units by the attempt's payment id, selling them by the order id, the provider's
    charge and refund by the payment id. What a crash between steps leaves is settled by `settle`
    (at the next payment, the window's end, or the reconciler): units sold mean the order is paid. The
    window's end and the reconciler are `repairs` (order_svc.repair), which finish payments through
    `settle` and `refund`.
    """

    def __init__(self, pool: AsyncConnectionPool, dsn: str, cart: CartClient, catalog: CatalogClient,
                 inventory: InventoryClient, provider: PaymentProvider, live: LiveSettings, clock: Clock,
                 reconcile_age_seconds: int = RECONCILE_AGE_SECONDS):
        self._pool = pool
        self._dsn = dsn
        self._cart = cart
        self._catalog = catalog
        self._inventory = inventory
        self._provider = provider
        self._live = live
        self._clock = clock
        self.repairs = Repairs(self, pool, cart, inventory, live, clock, reconcile_age_seconds)

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
                    # A replay: answered once a synchronous standby has the order (shop_runtime.idempotency).
                    async with conn.transaction():
                        await idempotency.durability_barrier(conn)
                    return await self._as_of_now(conn, earlier)
        order_id = str(uuid.uuid5(_CHECKOUT_NAMESPACE, f"{user}\x00{key}") if key else uuid.uuid4())
        window = self._live.get("payment_window_seconds")
        async with self._pool.connection() as conn:
            # Stored before the cart is asked: a hand-over whose order is never stored is found and finished.
            async with conn.transaction():
                await repo.add_checkout(conn, order_id, user, key or None)
        try:
            # The cart fixes names, takes each line's price and campaign from its hold, and refuses what cannot be
            # ordered before any hold moves.
            lines = await self._cart.hand_over(user, order_id, window)
        except ServiceError as err:
            if err.reason in _NOT_HANDED_OVER:  # refused before any hold moved: nothing to finish or give back
                async with self._pool.connection() as conn, conn.transaction():
                    await repo.drop_checkout(conn, order_id)
            raise
        order = order_of(order_id, user, lines, self._clock.now())
        async with self._pool.connection() as conn, conn.transaction():
            await repo.insert_order(conn, order, key or None)
            stored = await repo.get_order(conn, order_id, user)
            # Inserted just now, or already there: the insert skips only a row with this id or this user and
            # key, and with a key the id derives from the user and key, so either is this user's order of this
            # id, committed before the insert went on; orders are never deleted.
            assert stored is not None
            return await self._as_of_now(conn, stored)

    # --- payment ------------------------------------------------------------------------------

    async def pay(self, user: str, key: str, order_id: str, amount: int, method: str, token: str) -> OrderRecord:
        """Charges the order's total and sells its held units; a key answers its first answer again.

        At most one charge stands per order: the attempt is committed before the provider is called,
        a retry resumes it with the same payment id (charged at most once by the provider), an attempt
        left pending under another key is first settled (its units sold: the order is paid by it) or
        refunded before a new one, and a charge whose units cannot be sold is refunded.
        """
        if not key:
            raise refuse("IDEMPOTENCY_KEY_REQUIRED", "POST /payment needs an Idempotency-Key header")
        key = idempotency.check_key(key)
        if (order_uuid := as_order_uuid(order_id)) is None:
            raise _not_found(order_id)
        request_hash = idempotency.fingerprint("pay", order_uuid, amount, method, token)
        async with self._pool.connection() as conn:
            # An earlier attempt may have sold the units and been cut off before it said so: then the
            # order is paid by that attempt, whichever key it came with. Settled (and committed) first,
            # so whatever this call answers, the order's state is true.
            async with conn.transaction():
                order = await repo.get_order(conn, order_uuid, user, for_update=True)
                if order is not None and order.status == PENDING_PAYMENT:
                    await self.settle(conn, order)
        try:
            paid = await self._pay(user, key, order_uuid, order_id, request_hash, amount, method, token)
        except _SoldMeanwhile as sold_by_another:
            # An earlier attempt's commit landed while this one was taking the units over: it paid.
            async with self._pool.connection() as conn, conn.transaction():
                order = await repo.get_order(conn, order_uuid, user, for_update=True)
                # _pay found this user's order before it took the units over, and orders are never deleted.
                assert order is not None
                if order.status == PENDING_PAYMENT:
                    await self.settle(conn, order)
            await self.refund(sold_by_another.payment_id, order_id)  # this attempt charged nothing yet
            raise _already_paid(order_id) from None
        await self.deliver_sales()
        return paid

    async def _pay(self, user: str, key: str, order_uuid: str, order_id: str, request_hash: bytes, amount: int,
                   method: str, token: str) -> OrderRecord:
        async with self._pool.connection() as conn, conn.transaction():
            # The order's row lock makes payments of one order (and its expiry, and the reconciler) take turns.
            order = await repo.get_order(conn, order_uuid, user, for_update=True)
            if order is None:
                raise _not_found(order_id)
            attempt = await repo.attempt(conn, user, key)
            if attempt is not None:
                if attempt.request_hash != request_hash:
                    raise _reused()
                if attempt.state == SUCCEEDED:
                    return await self._as_of_now(conn, order)
                if attempt.state == DECLINED:
                    raise _declined(order_id)
                if attempt.state == REFUNDED:
                    raise _already_paid(order_id) if order.status == PAID else refuse(
                        "PAYMENT_SUPERSEDED", "this payment was cancelled and refunded; pay with a new Idempotency-Key",
                        {"order_id": order_id})
            if order.status == PAID:
                if attempt is not None:  # paid under another key meanwhile: this attempt's charge goes back
                    await self.refund(attempt.payment_id, order_id)
                raise _already_paid(order_id)
            now = await self._clock.db_now(conn)
            if attempt is None:
                if order.status_at(now) == EXPIRED:
                    raise _expired(order_id)
                if amount != order.total:
                    raise refuse("AMOUNT_MISMATCH", f"the order totals {order.total}, not {amount}",
                                 {"total": order.total})
                attempt = PaymentAttempt(request_hash, order_uuid, f"pay_{uuid.uuid4().hex}", PENDING)
                async with await self._side() as side:
                    try:
                        # Committed before the provider is called: a crash after the charge cannot lead to a second.
                        await repo.insert_attempt(side, user, key, attempt)
                    except psycopg.errors.UniqueViolation:  # the same key, at the same moment, for another order
                        raise _reused() from None
            if order.status_at(now) == EXPIRED:
                await self.refund(attempt.payment_id, order_id)
                raise _expired(order_id)
            holds = await self._keep_units(order, attempt.payment_id, user)
            # The units are this attempt's now: an earlier attempt cut off (its commit perhaps still on its
            # way) can no longer sell them, so any charge of its goes back.
            for other in await repo.pending_attempts(conn, order_uuid):
                if other != attempt.payment_id:
                    await self.refund(other, order_id)
            try:
                charge = await self._charge(attempt.payment_id, order, method, token)
            except (ProviderUnavailable, asyncio.TimeoutError) as err:
                # The attempt stays PENDING: a retry with the same key asks again for the same payment id.
                raise _provider_unavailable(order_id) from err
            if not charge.approved:
                async with await self._side() as side:
                    await repo.set_attempt_state(side, attempt.payment_id, DECLINED)
                raise _declined(order_id, charge.reason)
            try:
                await self._inventory.commit(holds, f"pay:{attempt.payment_id}",
                                             owner=_attempt_owner(order_uuid, attempt.payment_id), user=user)
            except ServiceError as err:
                if err.reason not in HOLDS_GONE:
                    raise  # e.g. inventory unavailable: a retry with the key resumes this attempt
                await self.refund(attempt.payment_id, order_id)
                raise _expired(order_id) from err
            await self._record_paid(conn, order, attempt.payment_id)
            paid = await repo.get_order(conn, order_uuid, user)
            # Read under the row lock this transaction took on the order above; orders are never deleted.
            assert paid is not None
            return await self._as_of_now(conn, paid)

    async def settle(self, conn: AsyncConnection, order: OrderRecord) -> bool:
        """Finishes an unpaid order whose units a cut-off payment attempt sold: as paid by the attempt the
        provider charged (other charges refunded). False, changing nothing, when its units are not sold.
        The caller holds the order's row lock."""
        pending = await repo.pending_attempts(conn, order.id)
        if not pending:
            return False
        found = await self._inventory.holds(order.hold_ids)
        if not sold([found[h].state for h in order.hold_ids if h in found], len(order.hold_ids)):
            return False
        charged = [p for p in pending if await self._provider.charged(p)]
        if not charged:
            _LOGGER.error("order %s: units sold but no pending attempt is charged; recording %s", order.id, pending[-1])
        payer = charged[0] if charged else pending[-1]
        for other in charged[1:]:
            await self.refund(other, order.id)
        await self._record_paid(conn, order, payer)
        metrics.repaired("order", "sold_order_recorded_paid",
                         "order %s had its units sold by payment %s, cut off before it said so; recorded as paid",
                         order.id, payer)
        return True

    async def _record_paid(self, conn: AsyncConnection, order: OrderRecord, payment_id: str) -> None:
        """The order is paid: its status, its attempt, and its units sold queued for the catalog."""
        await repo.mark_paid(conn, order.id, payment_id, self._clock.now())
        await repo.set_attempt_state(conn, payment_id, SUCCEEDED)
        sales = catalog_pb2.RecordSalesRequest(order_id=order.id, lines=[
            catalog_pb2.SaleLine(sku=sku, qty=qty) for sku, qty in order.units.items()])
        await repo.add_outbox(conn, order.id, sales.SerializeToString())

    async def _keep_units(self, order: OrderRecord, payment_id: str, user: str) -> list[str]:
        """Moves the order's units to this attempt (only its commit can sell them) and keeps them past the
        provider's answer; an order whose units are gone is expired, one whose units are sold was paid."""
        try:
            kept = await self._inventory.extend(order.hold_ids, _attempt_owner(order.id, payment_id), order.id,
                                                order.payment_hold_seconds(), f"pay-hold:{payment_id}", user=user)
        except ServiceError as err:
            if err.metadata.get("state") == COMMITTED:
                raise _SoldMeanwhile(payment_id) from err
            if err.reason in HOLDS_GONE:
                await self.refund(payment_id, order.id)
                raise _expired(order.id) from err
            raise
        holds = [h.hold_id for h in kept]
        if holds != order.hold_ids:
            # Recorded at once, on its own connection: a decline rolls the payment back, not this.
            async with await self._side() as side:
                await repo.set_hold_ids(side, order.id, holds)
        return holds

    async def _charge(self, payment_id: str, order: OrderRecord, method: str, token: str) -> Charge:
        return await asyncio.wait_for(faults.around(
            "order", "provider", "charge",
            lambda: self._provider.charge(payment_id, order.total, order.currency, method, token),
            ProviderUnavailable), deadlines.attempt_timeout(PROVIDER_TIMEOUT_SECONDS))

    async def refund(self, payment_id: str, order_id: str) -> None:
        """Refunds an attempt (the provider refunds once per payment id, so a lost answer is asked again)."""
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(3), reraise=True,
                                               wait=wait_exponential_jitter(multiplier=0.1, max=1.0, jitter=0.1),
                                               retry=retry_if_exception_type((ProviderUnavailable,
                                                                              asyncio.TimeoutError))):
                with attempt:
                    await asyncio.wait_for(faults.around("order", "provider", "refund",
                                                         lambda: self._provider.refund(payment_id),
                                                         ProviderUnavailable),
                                           deadlines.attempt_timeout(PROVIDER_TIMEOUT_SECONDS))
        except (ProviderUnavailable, asyncio.TimeoutError) as err:
            raise _provider_unavailable(order_id) from err
        async with await self._side() as side:
            await repo.set_attempt_state(side, payment_id, REFUNDED)

    # --- reading ------------------------------------------------------------------------------

    async def _as_of_now(self, conn: AsyncConnection, order: OrderRecord) -> OrderRecord:
        """The order with its status as of the database's now (an unpaid order past its window is EXPIRED)."""
        return replace(order, status=order.status_at(await self._clock.db_now(conn)))

    async def get(self, user: str, order_id: str) -> OrderRecord:
        """One of the user's orders; anyone else's is NOT_FOUND, exactly like a missing one."""
        if (order_uuid := as_order_uuid(order_id)) is None:
            raise _not_found(order_id)
        async with self._pool.connection() as conn:
            order = await repo.get_order(conn, order_uuid, user)
            if order is None:
                raise _not_found(order_id)
            return await self._as_of_now(conn, order)

    async def list(self, user: str, page: int | None, limit: int | None) -> tuple[list[OrderRecord], int, int, int]:
        """A page of the user's orders, newest first: (orders, page, limit, total)."""
        page, limit = page_and_limit(page, limit)
        async with self._pool.connection() as conn:
            orders, total = await repo.list_orders(conn, user, limit, (page - 1) * limit)
            now = await self._clock.db_now(conn)
        return [replace(o, status=o.status_at(now)) for o in orders], page, limit, total

    # --- background -------------------------------------------------------------------------

    async def expire_due(self, limit: int = 100) -> int:
        """Ends unpaid orders past their window (Repairs.expire_due), for the sweeper."""
        return await self.repairs.expire_due(limit)

    async def reconcile(self) -> int:
        """Repairs what a crash or a lost answer between steps left behind (Repairs.reconcile)."""
        return await self.repairs.reconcile()

    async def deliver_sales(self, limit: int = 100) -> int:
        """Sends paid orders' units sold to the catalog (each once); what fails stays for the next pass."""
        delivered = 0
        async with self._pool.connection() as conn, conn.transaction():
            for order_id, payload in await repo.pending_outbox(conn, limit):
                sales = catalog_pb2.RecordSalesRequest.FromString(payload)
                try:
                    await self._catalog.record_sales(sales.order_id, {x.sku: x.qty for x in sales.lines})
                except ServiceError as err:
                    _LOGGER.warning("units sold of order %s not delivered yet: %s", order_id, err.message)
                    break
                await repo.mark_delivered(conn, order_id)
                delivered += 1
        return delivered
