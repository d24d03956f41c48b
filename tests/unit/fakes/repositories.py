"""The cart's and the order's repositories in memory."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import psycopg

from cart_svc.client import HandedLine
from cart_svc.model import CartView, Line
from order_svc.model import PAID, PENDING, PENDING_PAYMENT, OrderRecord, PaymentAttempt
from tests.clock import ManualClock
from tests.unit.fakes.db import Tables


class FakeCartRepository(Tables):
    """cart_svc.repository in memory."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Line] = {}  # (user, sku) -> line
        self.checkouts: dict[str, tuple[str, list[HandedLine]]] = {}  # order id -> (user, lines handed over)
        self.changes: dict[tuple[str, str], tuple[bytes, dict]] = {}  # (user, key) -> (request hash, view json)

    async def lock_user(self, conn, user):
        pass

    async def lines(self, conn, user):
        return sorted((x for (u, _), x in self.rows.items() if u == user), key=lambda x: (x.added_at, x.sku))

    async def read_cart(self, conn, user, key):
        return (await self.change(conn, user, key) if key else None), await self.lines(conn, user)

    async def place_line(self, conn, user, line, prior_hold_id):
        old = self.rows.get((user, line.sku))
        if (old.hold_id if old is not None else None) != prior_hold_id:
            return False
        await self.put_line(conn, user, line)
        return True

    async def put_line(self, conn, user, line):
        if (old := self.rows.get((user, line.sku))) is not None:
            line = replace(line, added_at=old.added_at)
        self._put(conn, self.rows, (user, line.sku), line)

    async def delete_lines(self, conn, user, skus):
        for sku in skus:
            self._drop(conn, self.rows, (user, sku))

    async def checkout(self, conn, order_id):
        return self.checkouts.get(order_id)

    async def record_checkout(self, conn, order_id, user, lines):
        assert order_id not in self.checkouts, "cart.checkouts has order_id as its primary key"
        self._put(conn, self.checkouts, order_id, (user, list(lines)))

    async def change(self, conn, user, key):
        row = self.changes.get((user, key))
        return (row[0], CartView.from_json(row[1])) if row else None

    async def record_change(self, conn, user, key, request_hash, view):
        assert (user, key) not in self.changes, "cart.changes has (user_id, key) as its primary key"
        self._put(conn, self.changes, (user, key), (request_hash, json.loads(json.dumps(view.to_json()))))

    async def line_with_hold(self, conn, user, hold_id):
        return any(u == user and x.hold_id == hold_id for (u, _), x in self.rows.items())


@dataclass(frozen=True)
class _AttemptRow:
    user: str
    key: str
    attempt: PaymentAttempt
    created_at: datetime
    seq: int


class FakeOrderRepository(Tables):
    """order_svc.repository in memory; `created_at` defaults from the clock, as the tables' now() would."""

    def __init__(self, clock: ManualClock):
        self.clock = clock
        self.orders: dict[str, OrderRecord] = {}
        self.checkout_keys: dict[tuple[str, str], str] = {}  # (user, checkout key) -> order id
        self.checkouts: dict[str, tuple[str, str | None, datetime]] = {}  # order id -> (user, key, created_at)
        self.payments: dict[tuple[str, str], _AttemptRow] = {}
        self.outbox: dict[str, tuple[bytes, bool]] = {}  # order id -> (payload, delivered)

    def attempts_of(self, order_id: str) -> list[PaymentAttempt]:
        """An order's payment attempts, oldest first."""
        rows = sorted((r for r in self.payments.values() if r.attempt.order_id == order_id), key=lambda r: r.seq)
        return [r.attempt for r in rows]

    async def get_order(self, conn, order_id, user, *, for_update=False):
        order = self.orders.get(order_id)
        return order if order is not None and order.user_id == user else None

    async def order_by_checkout_key(self, conn, user, key):
        order_id = self.checkout_keys.get((user, key))
        return self.orders[order_id] if order_id else None

    async def list_orders(self, conn, user, limit, offset):
        mine = sorted((o for o in self.orders.values() if o.user_id == user), key=lambda o: o.id)
        mine.sort(key=lambda o: o.created_at, reverse=True)
        return mine[offset:offset + limit], len(mine)

    async def insert_order(self, conn, order, checkout_key):
        if order.id in self.orders or (checkout_key and (order.user_id, checkout_key) in self.checkout_keys):
            return
        self._put(conn, self.orders, order.id, replace(order, items=list(order.items)))
        if checkout_key:
            self._put(conn, self.checkout_keys, (order.user_id, checkout_key), order.id)

    async def set_hold_ids(self, conn, order_id, hold_ids):
        order = self.orders[order_id]
        items = [replace(item, hold_id=h) for item, h in zip(order.items, hold_ids, strict=True)]
        self._put(conn, self.orders, order_id, replace(order, items=items))

    async def mark_paid(self, conn, order_id, payment_id, now):
        self._put(conn, self.orders, order_id, replace(self.orders[order_id], status=PAID, payment_id=payment_id,
                                                       paid_at=now))

    async def mark_expired(self, conn, order_id):
        if self.orders[order_id].status == PENDING_PAYMENT:
            self._put(conn, self.orders, order_id, replace(self.orders[order_id], status="EXPIRED"))

    async def due_orders(self, conn, now, limit):
        due = sorted((o for o in self.orders.values() if o.status == PENDING_PAYMENT and o.pay_before <= now),
                     key=lambda o: o.pay_before)
        return [(o.id, o.user_id) for o in due[:limit]]

    async def lock_order(self, conn, order_id):
        return self.orders.get(order_id)

    async def orders_with_stale_attempts(self, conn, now, min_age_seconds, limit):
        made_before = now - timedelta(seconds=min_age_seconds)
        stale = {r.attempt.order_id: None for r in sorted(self.payments.values(), key=lambda r: r.seq)
                 if r.attempt.state == PENDING and r.created_at <= made_before}
        return list(stale)[:limit]

    async def add_checkout(self, conn, order_id, user, key):
        if order_id not in self.checkouts:
            self._put(conn, self.checkouts, order_id, (user, key, self.clock.now()))

    async def unfinished_checkouts(self, conn, now, min_age_seconds, limit):
        made_before = now - timedelta(seconds=min_age_seconds)
        rows = sorted(((c[2], order_id, c[0], c[1]) for order_id, c in self.checkouts.items()
                       if c[2] <= made_before and order_id not in self.orders))
        return [(order_id, user, key) for _, order_id, user, key in rows[:limit]]

    async def drop_checkout(self, conn, order_id):
        self._drop(conn, self.checkouts, order_id)

    async def checkouts_among(self, conn, order_ids):
        return {i for i in order_ids if i in self.checkouts}

    async def orders_by_id(self, conn, order_ids):
        return {i: self.orders[i].status for i in order_ids if i in self.orders}

    async def attempt(self, conn, user, key):
        row = self.payments.get((user, key))
        return row.attempt if row else None

    async def pending_attempts(self, conn, order_id):
        return [a.payment_id for a in self.attempts_of(order_id) if a.state == PENDING]

    async def insert_attempt(self, conn, user, key, a):
        if (user, key) in self.payments or any(r.attempt.payment_id == a.payment_id for r in self.payments.values()):
            raise psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")
        row = _AttemptRow(user, key, replace(a, state=PENDING), self.clock.now(), len(self.payments))
        self._put(conn, self.payments, (user, key), row)

    async def set_attempt_state(self, conn, payment_id, state):
        for k, row in list(self.payments.items()):
            if row.attempt.payment_id == payment_id:
                self._put(conn, self.payments, k, replace(row, attempt=replace(row.attempt, state=state)))

    async def add_outbox(self, conn, order_id, payload):
        if order_id not in self.outbox:
            self._put(conn, self.outbox, order_id, (payload, False))

    async def pending_outbox(self, conn, limit):
        return [(order_id, payload) for order_id, (payload, delivered) in self.outbox.items() if not delivered][:limit]

    async def mark_delivered(self, conn, order_id):
        self._put(conn, self.outbox, order_id, (self.outbox[order_id][0], True))
