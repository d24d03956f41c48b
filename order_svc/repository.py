"""The order service's SQL, over the `orders` schema only."""

from __future__ import annotations

from datetime import datetime

from psycopg import AsyncConnection

from order_svc.model import Item, OrderRecord, PaymentAttempt


_ORDER_COLUMNS = "id::text, user_id, status, total, currency, pay_before, created_at, payment_id, paid_at"
# A row of _ORDER_COLUMNS: every field of OrderRecord but its items, in the same order.
OrderRow = tuple[str, str, str, int, str, datetime, datetime, "str | None", "datetime | None"]


async def _with_items(conn: AsyncConnection, rows: list[OrderRow]) -> list[OrderRecord]:
    if not rows:
        return []
    cur = await conn.execute(
        "SELECT order_id::text, sku, name, price, qty, hold_id::text, COALESCE(campaign_id::text, '')"
        " FROM orders.items"
        " WHERE order_id = ANY(%s::uuid[]) ORDER BY order_id, position", ([r[0] for r in rows],))
    items: dict[str, list[Item]] = {}
    for order_id, *rest in await cur.fetchall():
        items.setdefault(order_id, []).append(Item(*rest))
    return [OrderRecord(*r, items=items.get(r[0], [])) for r in rows]


async def _one_order(conn: AsyncConnection, where: str, params: tuple) -> OrderRecord | None:
    cur = await conn.execute(f"SELECT {_ORDER_COLUMNS} FROM orders.orders WHERE {where}", params)
    row = await cur.fetchone()
    return (await _with_items(conn, [row]))[0] if row else None


async def get_order(conn: AsyncConnection, order_id: str, user: str, *, for_update: bool = False) -> OrderRecord | None:
    """The user's order, optionally locked for the rest of the transaction; None for anyone else's."""
    # NO KEY UPDATE: concurrent payments of the order take turns, while rows that merely reference it
    # (a payment attempt written on another connection) can still be inserted.
    lock = " FOR NO KEY UPDATE" if for_update else ""
    return await _one_order(conn, f"id = %s AND user_id = %s{lock}", (order_id, user))


async def order_by_checkout_key(conn: AsyncConnection, user: str, key: str) -> OrderRecord | None:
    """The order an earlier checkout with this key made."""
    return await _one_order(conn, "user_id = %s AND checkout_key = %s", (user, key))


async def list_orders(conn: AsyncConnection, user: str, limit: int, offset: int) -> tuple[list[OrderRecord], int]:
    """A page of the user's orders, newest first, and how many there are."""
    cur = await conn.execute(
        f"SELECT {_ORDER_COLUMNS} FROM orders.orders WHERE user_id = %s ORDER BY created_at DESC, id"
        " LIMIT %s OFFSET %s", (user, limit, offset))
    rows = await cur.fetchall()
    cur = await conn.execute("SELECT count(*) FROM orders.orders WHERE user_id = %s", (user,))
    counted = await cur.fetchone()
    # count(*) without GROUP BY always returns exactly one row, even for a user with no orders.
    assert counted is not None
    return await _with_items(conn, rows), counted[0]


async def insert_order(conn: AsyncConnection, order: OrderRecord, checkout_key: str | None) -> None:
    """Stores a new order and its lines; a second insert of the same id changes nothing."""
    cur = await conn.execute(
        "INSERT INTO orders.orders (id, user_id, status, total, currency, pay_before, created_at, checkout_key)"
        # No conflict target: the same order id, or the same user and checkout key, arriving twice at once.
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (order.id, order.user_id, order.status, order.total, order.currency, order.pay_before, order.created_at,
         checkout_key))
    if await cur.fetchone() is None:
        return
    async with conn.cursor() as c:
        await c.executemany(
            "INSERT INTO orders.items (order_id, position, sku, name, price, qty, hold_id, campaign_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(order.id, i, it.sku, it.name, it.price, it.qty, it.hold_id, it.campaign_id or None)
             for i, it in enumerate(order.items)])


async def set_hold_ids(conn: AsyncConnection, order_id: str, hold_ids: list[str]) -> None:
    """Records the holds that keep the order's lines (in line order) after they were moved or renewed."""
    async with conn.cursor() as c:
        await c.executemany("UPDATE orders.items SET hold_id = %s WHERE order_id = %s AND position = %s",
                            [(h, order_id, i) for i, h in enumerate(hold_ids)])


async def mark_paid(conn: AsyncConnection, order_id: str, payment_id: str, now: datetime) -> None:
    """The order is paid."""
    await conn.execute("UPDATE orders.orders SET status = 'PAID', payment_id = %s, paid_at = %s WHERE id = %s",
                       (payment_id, now, order_id))


async def mark_expired(conn: AsyncConnection, order_id: str) -> None:
    """The order's window closed unpaid."""
    await conn.execute("UPDATE orders.orders SET status = 'EXPIRED' WHERE id = %s AND status = 'PENDING_PAYMENT'",
                       (order_id,))


async def due_orders(conn: AsyncConnection, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(order id, user) of unpaid orders past their window that no one else is working on; locked."""
    cur = await conn.execute(
        "SELECT id::text, user_id FROM orders.orders WHERE status = 'PENDING_PAYMENT' AND pay_before <= %s"
        " ORDER BY pay_before LIMIT %s FOR NO KEY UPDATE SKIP LOCKED", (now, limit))
    return await cur.fetchall()


async def lock_order(conn: AsyncConnection, order_id: str) -> OrderRecord | None:
    """The order, locked for the rest of the transaction, unless someone (a payment) is working on it."""
    cur = await conn.execute("SELECT user_id FROM orders.orders WHERE id = %s FOR NO KEY UPDATE SKIP LOCKED",
                             (order_id,))
    row = await cur.fetchone()
    return await get_order(conn, order_id, row[0]) if row else None


async def orders_with_stale_attempts(conn: AsyncConnection, now: datetime, min_age_seconds: int,
                                     limit: int) -> list[str]:
    """Orders with a payment attempt left PENDING for min_age_seconds or more: cut off, charged or not."""
    cur = await conn.execute(
        "SELECT DISTINCT order_id::text FROM orders.payments WHERE state = 'PENDING'"
        " AND created_at <= %s - make_interval(secs => %s) LIMIT %s", (now, min_age_seconds, limit))
    return [r[0] for r in await cur.fetchall()]


async def add_checkout(conn: AsyncConnection, order_id: str, user: str, key: str | None) -> None:
    """Records, before the cart is asked, that a checkout to `order_id` is under way."""
    await conn.execute("INSERT INTO orders.checkouts (order_id, user_id, checkout_key) VALUES (%s, %s, %s)"
                       " ON CONFLICT DO NOTHING", (order_id, user, key))


async def unfinished_checkouts(conn: AsyncConnection, now: datetime, min_age_seconds: int,
                               limit: int) -> list[tuple[str, str, str | None]]:
    """(order id, user, key) of checkouts under way for min_age_seconds or more with no order yet; locked."""
    cur = await conn.execute(
        "SELECT c.order_id::text, c.user_id, c.checkout_key FROM orders.checkouts c"
        " WHERE c.created_at <= %s - make_interval(secs => %s)"
        " AND NOT EXISTS (SELECT 1 FROM orders.orders o WHERE o.id = c.order_id)"
        " ORDER BY c.created_at LIMIT %s FOR UPDATE SKIP LOCKED", (now, min_age_seconds, limit))
    return await cur.fetchall()


async def drop_checkout(conn: AsyncConnection, order_id: str) -> None:
    """Forgets a checkout that never took the cart."""
    await conn.execute("DELETE FROM orders.checkouts WHERE order_id = %s", (order_id,))


async def orders_by_id(conn: AsyncConnection, order_ids: list[str]) -> dict[str, str]:
    """order id -> status, for the ids that are orders."""
    cur = await conn.execute("SELECT id::text, status FROM orders.orders WHERE id = ANY(%s::uuid[])", (order_ids,))
    return dict(await cur.fetchall())


async def attempt(conn: AsyncConnection, user: str, key: str) -> PaymentAttempt | None:
    """The payment attempt made under the user's key."""
    cur = await conn.execute(
        "SELECT request_hash, order_id::text, payment_id, state FROM orders.payments"
        " WHERE user_id = %s AND idempotency_key = %s", (user, key))
    row = await cur.fetchone()
    return PaymentAttempt(bytes(row[0]), *row[1:]) if row else None


async def pending_attempts(conn: AsyncConnection, order_id: str) -> list[str]:
    """Payment ids of the order's attempts that may have been charged and were cut off."""
    cur = await conn.execute("SELECT payment_id FROM orders.payments WHERE order_id = %s AND state = 'PENDING'"
                             " ORDER BY created_at", (order_id,))
    return [r[0] for r in await cur.fetchall()]


async def insert_attempt(conn: AsyncConnection, user: str, key: str, a: PaymentAttempt) -> None:
    """Records a payment attempt as PENDING."""
    await conn.execute(
        "INSERT INTO orders.payments (user_id, idempotency_key, request_hash, order_id, payment_id, state)"
        " VALUES (%s, %s, %s, %s, %s, 'PENDING')", (user, key, a.request_hash, a.order_id, a.payment_id))


async def set_attempt_state(conn: AsyncConnection, payment_id: str, state: str) -> None:
    """Ends a payment attempt."""
    await conn.execute("UPDATE orders.payments SET state = %s WHERE payment_id = %s", (state, payment_id))


async def add_outbox(conn: AsyncConnection, order_id: str, payload: bytes) -> None:
    """Queues the order's units sold for the catalog."""
    await conn.execute("INSERT INTO orders.outbox (order_id, payload) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                       (order_id, payload))


async def pending_outbox(conn: AsyncConnection, limit: int) -> list[tuple[str, bytes]]:
    """Undelivered outbox entries no one else is delivering; locked."""
    cur = await conn.execute(
        "SELECT order_id::text, payload FROM orders.outbox WHERE delivered_at IS NULL"
        " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED", (limit,))
    return [(r[0], bytes(r[1])) for r in await cur.fetchall()]


async def mark_delivered(conn: AsyncConnection, order_id: str) -> None:
    """The catalog has the order's units sold."""
    await conn.execute("UPDATE orders.outbox SET delivered_at = now() WHERE order_id = %s", (order_id,))
