"""The order's repair work: unpaid orders expired, cut-off checkouts and payments finished, orphan holds released."""

from __future__ import annotations

from typing import Protocol

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from cart_svc.client import CHECKOUT_NOT_FOUND, CartClient, cart_owner
from inventory_svc.client import InventoryClient
from order_svc import repository as repo
from order_svc.model import EXPIRED, HOLDS_GONE, PAID, PENDING_PAYMENT, OrderRecord, as_order_uuid, order_of
from shop_runtime import metrics
from shop_runtime.clock import Clock
from shop_runtime.errors import ServiceError
from shop_runtime.live_settings import LiveSettings

# What a reconciler leaves alone: checkouts and payments younger than this may still be under way.
RECONCILE_AGE_SECONDS = 60


class PaymentSteps(Protocol):
    """The steps of a payment the repairs finish (order_svc.service.Orders)."""

    async def settle(self, conn: AsyncConnection, order: OrderRecord) -> bool:
        """Finishes an unpaid order whose units a cut-off attempt sold, as paid; False when they are not sold."""
        ...

    async def refund(self, payment_id: str, order_id: str) -> None:
        """Refunds an attempt."""
        ...


class Repairs:
    """What a crash or a lost answer between a purchase's steps leaves, and the end of an unpaid order's window,
    finished; each safe in every replica (an order is taken under its row lock, a hold released with one key)."""

    def __init__(self, steps: PaymentSteps, pool: AsyncConnectionPool, cart: CartClient, inventory: InventoryClient,
                 live: LiveSettings, clock: Clock, reconcile_age_seconds: int = RECONCILE_AGE_SECONDS):
        self._steps = steps
        self._pool = pool
        self._cart = cart
        self._inventory = inventory
        self._live = live
        self._clock = clock
        self._reconcile_age = reconcile_age_seconds

    async def expire_due(self, limit: int = 100) -> int:
        """Ends unpaid orders past their window: units back, cut-off charges refunded; safe in every replica.

        An order whose units were sold by a payment cut off before it was recorded is finished as
        paid instead: the charge happened before the units were sold.
        """
        ended = 0
        for _ in range(limit):
            async with self._pool.connection() as conn, conn.transaction():
                due = await repo.due_orders(conn, await self._clock.db_now(conn), 1)
                if not due:
                    break
                ((order_id, user),) = due
                order = await repo.get_order(conn, order_id, user)
                # due_orders just locked this row in this transaction, and orders are never deleted.
                assert order is not None
                ended += 1
                # Released first, whoever holds them now: once released, no attempt's commit still on its way
                # can sell them, so what is sold now is all that ever will be.
                for hold_id in order.hold_ids:  # one by one: a hold that already expired does not keep the others
                    await self._inventory.release_if_held(hold_id, "", f"expire:{hold_id}")
                if await self._steps.settle(conn, order):
                    continue
                for payment_id in await repo.pending_attempts(conn, order_id):
                    await self._steps.refund(payment_id, order_id)
                await repo.mark_expired(conn, order_id)
        return ended

    async def reconcile(self) -> int:
        """Repairs what a crash or a lost answer between steps left behind; safe in every replica (each
        order is taken under its row lock, skipping those someone is working on). Returns the repairs."""
        return await self._finish_checkouts() + await self._settle_attempts() + await self._release_orphans()

    async def _finish_checkouts(self) -> int:
        """Checkouts cut off after the cart handed its lines over: their order is stored from the hand-over."""
        repaired = 0
        async with self._pool.connection() as conn, conn.transaction():
            now = await self._clock.db_now(conn)
            for order_id, user, key in await repo.unfinished_checkouts(conn, now, self._reconcile_age, 50):
                try:
                    lines = await self._cart.hand_over(user, order_id, 1, replay_only=True)
                except ServiceError as err:
                    if err.reason != CHECKOUT_NOT_FOUND:
                        raise
                    # The cart never recorded a hand-over. If its move of the holds reached inventory (the
                    # answer lost, the cart rolled back), the holds still keep the cart's lines: back they go.
                    repaired += await self._give_back(order_id, user)
                    await repo.drop_checkout(conn, order_id)
                    continue
                await repo.insert_order(conn, order_of(order_id, user, lines, now), key)
                metrics.repaired("order", "checkout_finished", "checkout %s of %s took the cart but stored no order;"
                                 " order stored", order_id, user)
                repaired += 1
        return repaired

    async def _give_back(self, order_id: str, user: str) -> int:
        """Moves holds a cut-off hand-over took to `order_id` back to the user's cart; 1 if there were any."""
        owner = f"order:{order_id}"
        moved = [h.hold_id for h in await self._inventory.active_holds(owner, 0) if h.owner == owner]
        if not moved:
            return 0
        try:
            await self._inventory.extend(moved, cart_owner(user), "", self._live.get("reservation_ttl_seconds"),
                                         f"undo-checkout:{order_id}", from_owner=owner)
        except ServiceError as err:
            if err.reason not in HOLDS_GONE:
                raise
            return 0  # moved on meanwhile (a new checkout took them, or they ended): not ours to give back
        metrics.repaired("order", "checkout_undone", "checkout %s of %s moved %d hold(s) but the cart never"
                         " recorded it; holds given back to the cart", order_id, user, len(moved))
        return 1

    async def _settle_attempts(self) -> int:
        """Payment attempts cut off and left pending: settled as paid if they sold the units; refunded once
        their order has ended (paid by another attempt, or expired)."""
        repaired = 0
        async with self._pool.connection() as conn:
            stale = await repo.orders_with_stale_attempts(conn, await self._clock.db_now(conn),
                                                          self._reconcile_age, 50)
        for order_id in stale:
            async with self._pool.connection() as conn, conn.transaction():
                order = await repo.lock_order(conn, order_id)
                if order is None:  # a payment of it is under way
                    continue
                if order.status == PENDING_PAYMENT:
                    # Sold: paid by it. Not sold: left for the order's next payment, which takes the units over
                    # before refunding it, or for the end of its window (a commit may still be on its way).
                    repaired += await self._steps.settle(conn, order)
                    continue
                for payment_id in await repo.pending_attempts(conn, order_id):
                    await self._steps.refund(payment_id, order_id)
                    metrics.repaired("order", "cut_off_payment_refunded",
                                     "payment %s of order %s was cut off without selling; refunded", payment_id, order_id)
                    repaired += 1
        return repaired

    async def _release_orphans(self) -> int:
        """Holds still active for an order that has ended (paid or expired): units back. (Holds of an order
        never stored belong to a checkout that `_finish_checkouts` finishes or gives back to the cart.)"""
        repaired, after, limit = 0, "", 200
        while True:
            holds = await self._inventory.active_holds("order:", self._reconcile_age, after, limit)
            async with self._pool.connection() as conn:
                statuses = await repo.orders_by_id(conn, list({h.order_id for h in holds
                                                               if as_order_uuid(h.order_id)}))
            for hold in holds:
                if statuses.get(hold.order_id) not in (PAID, EXPIRED) or not await \
                        self._inventory.release_if_held(hold.hold_id, hold.owner, f"reconcile:{hold.hold_id}"):
                    continue
                metrics.repaired("order", "orphan_order_hold", "released hold %s of order %s (%s), which no"
                                 " order awaiting payment keeps", hold.hold_id, hold.order_id, statuses[hold.order_id])
                repaired += 1
            if len(holds) < limit:
                return repaired
            after = holds[-1].hold_id
