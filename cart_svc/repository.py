"""The cart's SQL, over the `cart` schema only."""

from __future__ import annotations

import json

from psycopg import AsyncConnection

from cart_svc.messages import checkout_pb, handed_lines
from cart_svc.model import CartView, HandedLine, Line
from shop.cart.v1 import cart_pb2

# First key of the two-int advisory lock that serialises one user's cart changes.
USER_LOCK_NAMESPACE = 3


async def lock_user(conn: AsyncConnection, user: str) -> None:
    """Serialises changes to one user's cart for the rest of the transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (USER_LOCK_NAMESPACE, user))


async def lines(conn: AsyncConnection, user: str) -> list[Line]:
    """The user's lines, oldest first."""
    cur = await conn.execute(
        "SELECT sku, qty, hold_id::text, reserved_until, added_at, COALESCE(price, 0) FROM cart.lines"
            " WHERE user_id = %s"
        " ORDER BY added_at, sku", (user,))
    return [Line(*r) for r in await cur.fetchall()]


async def read_cart(conn: AsyncConnection, user: str, key: str) -> tuple[tuple[bytes, CartView] | None, list[Line]]:
    """(an earlier change under `key`, as `change` answers it, or None; the user's lines): the one read of a change.
    With a key, both statements travel in one round trip (pipeline mode)."""
    if not key:
        return None, await lines(conn, user)
    async with conn.pipeline():
        earlier = await conn.execute("SELECT request_hash, response FROM cart.changes WHERE user_id = %s AND key = %s",
                                     (user, key))
        rows = await conn.execute(
            "SELECT sku, qty, hold_id::text, reserved_until, added_at, COALESCE(price, 0) FROM cart.lines"
            " WHERE user_id = %s"
            " ORDER BY added_at, sku", (user,))
        found = await earlier.fetchone()
        found_lines = [Line(*r) for r in await rows.fetchall()]
    return ((bytes(found[0]), CartView.from_json(found[1])) if found else None), found_lines


# The user's lock, taken first by a statement that writes a line (a materialized CTE is computed before the
# rows it feeds), so the statement waits for a checkout under way and is, alone, a whole locked change.
_LOCKED = "WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock(%(ns)s, hashtext(%(user)s)))"


async def place_line(conn: AsyncConnection, user: str, line: Line, prior_hold_id: str | None) -> bool:
    """Under the user's lock, writes the user's line for the SKU if it still refers to `prior_hold_id` (None: if
    there is no line), as the change that decided it read it; False, writing nothing, when another change got
    there first. One statement: outside a transaction it is one locked round trip."""
    values = dict(ns=USER_LOCK_NAMESPACE, user=user, sku=line.sku, qty=line.qty, hold=line.hold_id,
                  until=line.reserved_until, added=line.added_at, prior=prior_hold_id, price=line.price or None)
    if prior_hold_id is None:
        cur = await conn.execute(
            _LOCKED + " INSERT INTO cart.lines (user_id, sku, qty, hold_id, reserved_until, added_at, price)"
            " SELECT %(user)s, %(sku)s, %(qty)s, %(hold)s, %(until)s, %(added)s, %(price)s FROM locked"
            " ON CONFLICT (user_id, sku) DO NOTHING RETURNING 1", values)
    else:
        cur = await conn.execute(
            _LOCKED + " UPDATE cart.lines SET qty = %(qty)s, hold_id = %(hold)s, reserved_until = %(until)s,"
            " price = %(price)s"
            " FROM locked WHERE user_id = %(user)s AND sku = %(sku)s AND hold_id = %(prior)s RETURNING 1", values)
    return await cur.fetchone() is not None


async def put_line(conn: AsyncConnection, user: str, line: Line) -> None:
    """Creates or replaces the user's line for the SKU."""
    await conn.execute(
        """
        INSERT INTO cart.lines (user_id, sku, qty, hold_id, reserved_until, added_at, price)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (user_id, sku) DO UPDATE
           SET qty = EXCLUDED.qty, hold_id = EXCLUDED.hold_id, reserved_until = EXCLUDED.reserved_until,
               price = EXCLUDED.price
        """,
        (user, line.sku, line.qty, line.hold_id, line.reserved_until, line.added_at, line.price or None),
    )


async def delete_lines(conn: AsyncConnection, user: str, skus: list[str]) -> None:
    """Removes the user's lines for the SKUs."""
    await conn.execute("DELETE FROM cart.lines WHERE user_id = %s AND sku = ANY(%s)", (user, skus))


async def checkout(conn: AsyncConnection, order_id: str) -> tuple[str, list[HandedLine]] | None:
    """(user, lines handed over) of an earlier hand-over to `order_id`."""
    cur = await conn.execute("SELECT user_id, response FROM cart.checkouts WHERE order_id = %s", (order_id,))
    row = await cur.fetchone()
    return (row[0], handed_lines(cart_pb2.CheckoutCartResponse.FromString(bytes(row[1])))) if row else None


async def record_checkout(conn: AsyncConnection, order_id: str, user: str, lines: list[HandedLine]) -> None:
    """Keeps a hand-over to `order_id`, as the CheckoutCart answer it was (byte for byte, so a replay answers the
    same)."""
    await conn.execute("INSERT INTO cart.checkouts (order_id, user_id, response) VALUES (%s, %s, %s)",
                       (order_id, user, checkout_pb(lines).SerializeToString()))


async def change(conn: AsyncConnection, user: str, key: str) -> tuple[bytes, CartView] | None:
    """(request hash, first answer) of the user's change made under `key`."""
    cur = await conn.execute("SELECT request_hash, response FROM cart.changes WHERE user_id = %s AND key = %s",
                             (user, key))
    row = await cur.fetchone()
    return (bytes(row[0]), CartView.from_json(row[1])) if row else None


async def record_change(conn: AsyncConnection, user: str, key: str, request_hash: bytes, view: CartView) -> None:
    """Keeps the first answer of the user's change under `key`, in the change's own transaction."""
    await conn.execute("INSERT INTO cart.changes (user_id, key, request_hash, response) VALUES (%s, %s, %s, %s)",
                       (user, key, request_hash, json.dumps(view.to_json())))


async def line_with_hold(conn: AsyncConnection, user: str, hold_id: str) -> bool:
    """Whether one of the user's lines refers to the hold."""
    cur = await conn.execute("SELECT 1 FROM cart.lines WHERE user_id = %s AND hold_id = %s", (user, hold_id))
    return await cur.fetchone() is not None
