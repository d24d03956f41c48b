"""The inventory's SQL, over the `inventory` schema only. Every write here runs under the SKU locks its caller took."""

from __future__ import annotations

import hashlib
from datetime import datetime

from psycopg import AsyncConnection, AsyncCursor

from inventory_svc.model import (ACTIVE, COMMITTED, COUNTED, EXPIRED, RELEASED, CampaignItem, HoldRecord, StockRow,
                                 StockTake)

# The records live in the model; named here too for the callers of this module's functions.
__all__ = ["ACTIVE", "COMMITTED", "EXPIRED", "RELEASED", "HoldRecord", "StockRow"]

_HOLD_COLUMNS = "id::text, owner, sku, qty, state, expires_at, order_id, buyer, COALESCE(price, 0), campaign_id::text"

# The instant of a statement: the one it is given, else the transaction's decision instant (`take_stock` sets it once
# after the locks, so every statement of the transaction decides at the same instant), else the database's clock as
# the statement starts.
_NOW = ("COALESCE(%(now)s::timestamptz, NULLIF(current_setting('inventory.now', true), '')::timestamptz,"
        " clock_timestamp())")


def sku_lock_key(sku: str) -> int:
    """The bigint advisory lock key of a SKU: stable across processes and versions (not Python's hash())."""
    return int.from_bytes(hashlib.sha256(sku.encode()).digest()[:8], "big", signed=True)


async def lock_skus(conn: AsyncConnection, skus: list[str]) -> None:
    """Takes each SKU's transaction-scoped advisory lock, in ascending key order, so no two calls deadlock."""
    for key in sorted({sku_lock_key(s) for s in skus}):
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))


async def try_lock_sku(conn: AsyncConnection, sku: str) -> bool:
    """Takes the SKU's lock if no one holds it; False at once otherwise."""
    cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (sku_lock_key(sku),))
    row = await cur.fetchone()
    # A SELECT of one function call without FROM: always exactly one row.
    assert row is not None
    return row[0]


_MOVE = """
    WITH s AS (
        UPDATE inventory.stock
           SET on_hand = on_hand + %(dh)s, reserved = reserved + %(dr)s, set_aside = set_aside + %(ds)s,
               updated_at = %(now)s
         WHERE sku = %(sku)s
        RETURNING sku, on_hand, reserved, set_aside
    )
    INSERT INTO inventory.ledger (sku, reason, on_hand_delta, reserved_delta, on_hand_after,
                                  reserved_after, actor, hold_id, order_id, created_at,
                                  set_aside_delta, set_aside_after, campaign_id)
    SELECT sku, %(reason)s, %(dh)s, %(dr)s, on_hand, reserved, %(actor)s, %(hold)s, %(order)s, %(now)s,
           %(ds)s, set_aside, %(campaign)s FROM s
    RETURNING sku, on_hand_after, reserved_after
"""


async def move(conn: AsyncConnection, *, sku: str, reason: str, on_hand_delta: int, reserved_delta: int,
               actor: str, now: datetime, hold_id: str | None = None, order_id: str | None = None,
               set_aside_delta: int = 0, campaign_id: str | None = None) -> None:
    """Changes a SKU's figures and writes the ledger entry for it, in one statement.

    It does not wait for the answer, so in pipeline mode it goes out with the statements after it.
    """
    await conn.execute(_MOVE, dict(dh=on_hand_delta, dr=reserved_delta, ds=set_aside_delta, now=now, sku=sku,
                                   reason=reason, actor=actor, hold=hold_id, order=order_id, campaign=campaign_id))


async def move_and_read(conn: AsyncConnection, *, sku: str, reason: str, on_hand_delta: int, reserved_delta: int,
                        actor: str, now: datetime, hold_id: str | None = None, order_id: str | None = None,
                        set_aside_delta: int = 0, campaign_id: str | None = None) -> StockRow:
    """`move`, then the SKU's figures after it."""
    await move(conn, sku=sku, reason=reason, on_hand_delta=on_hand_delta, reserved_delta=reserved_delta, actor=actor,
               now=now, hold_id=hold_id, order_id=order_id, set_aside_delta=set_aside_delta, campaign_id=campaign_id)
    return (await stock_rows(conn, [sku]))[sku]


async def reclaim_expired(conn: AsyncConnection, skus: list[str], now: datetime | None, actor: str) -> AsyncCursor:
    """Ends the SKUs' active holds whose expiry has passed and gives their units back; the caller holds the locks.

    A quota hold that expired before its campaign's end, whose item is still open, goes back to the quota (reserved
    down, set aside and the item's remaining up); one that expired at or after the end goes to regular stock (the
    item's returned up), as a regular hold does. One statement (holds, items, stock and one ledger entry per hold,
    in hold-id order) that the caller need not wait for: in pipeline mode it travels with the lock before it and
    the read after it. `now` None: the transaction's decision instant (`_NOW`). Its cursor's rowcount, once read,
    is the number of holds reclaimed.
    """
    return await conn.execute(
        f"""
        WITH t AS MATERIALIZED (
            SELECT {_NOW} AS now
        ), expired AS (
            UPDATE inventory.holds h SET state = 'EXPIRED', ended_at = t.now FROM t
             WHERE h.sku = ANY(%(skus)s) AND h.state = 'ACTIVE' AND h.expires_at <= t.now
            RETURNING h.id, h.sku, h.qty, h.order_id, h.campaign_id, h.expires_at, t.now
        ), sorted AS (
            SELECT e.*, COALESCE(ci.closed_at IS NULL AND e.expires_at < c.ends_at, false) AS to_quota
              FROM expired e
              LEFT JOIN inventory.campaign_items ci ON ci.campaign_id = e.campaign_id AND ci.sku = e.sku
              LEFT JOIN inventory.campaigns c ON c.id = e.campaign_id
        ), items AS (
            UPDATE inventory.campaign_items ci
               SET remaining = ci.remaining + x.to_quota, returned = ci.returned + x.to_regular
              FROM (SELECT campaign_id, sku, sum(CASE WHEN to_quota THEN qty ELSE 0 END)::int AS to_quota,
                           sum(CASE WHEN to_quota THEN 0 ELSE qty END)::int AS to_regular
                      FROM sorted WHERE campaign_id IS NOT NULL GROUP BY campaign_id, sku) x
             WHERE ci.campaign_id = x.campaign_id AND ci.sku = x.sku
        ), per_sku AS (
            SELECT sku, sum(qty)::int AS qty, sum(CASE WHEN to_quota THEN qty ELSE 0 END)::int AS to_quota,
                   min(now) AS now
              FROM sorted GROUP BY sku
        ), stock AS (
            UPDATE inventory.stock s SET reserved = s.reserved - p.qty, set_aside = s.set_aside + p.to_quota,
                                         updated_at = p.now
              FROM per_sku p WHERE s.sku = p.sku
            RETURNING s.sku, s.on_hand, s.reserved + p.qty AS reserved_before, s.set_aside - p.to_quota AS set_aside_before
        )
        INSERT INTO inventory.ledger (sku, reason, on_hand_delta, reserved_delta, on_hand_after,
                                      reserved_after, actor, hold_id, order_id, created_at,
                                      set_aside_delta, set_aside_after, campaign_id)
        SELECT e.sku, 'EXPIRE', 0, -e.qty, st.on_hand,
               st.reserved_before - sum(e.qty) OVER w,
               %(actor)s, e.id, e.order_id, e.now,
               CASE WHEN e.to_quota THEN e.qty ELSE 0 END,
               st.set_aside_before + sum(CASE WHEN e.to_quota THEN e.qty ELSE 0 END) OVER w,
               e.campaign_id
          FROM sorted e JOIN stock st ON st.sku = e.sku
        WINDOW w AS (PARTITION BY e.sku ORDER BY e.id)
         ORDER BY e.sku, e.id
        """,
        dict(now=now, skus=skus, actor=actor),
    )


async def close_ended_items(conn: AsyncConnection, skus: list[str], now: datetime | None, actor: str) -> AsyncCursor:
    """Closes the SKUs' open campaign items whose campaign has ended (or was cancelled) by `now`: what is left of
    each quota goes back to regular stock (set aside down, the item's returned up, remaining 0), one CAMPAIGN_END
    ledger entry per item. The caller holds the locks and has reclaimed the SKUs' expired holds first (so those that
    expired before the end came back to the quota). Like `reclaim_expired`, one statement not waited for; `now`
    None: the transaction's decision instant. Its cursor's rowcount, once read, is the number of items closed."""
    return await conn.execute(
        f"""
        WITH t AS MATERIALIZED (
            SELECT {_NOW} AS now
        ), ending AS (
            SELECT ci.campaign_id, ci.sku, ci.remaining, LEAST(c.ends_at, COALESCE(c.cancelled_at, c.ends_at)) AS closed,
                   t.now
              FROM inventory.campaign_items ci JOIN inventory.campaigns c ON c.id = ci.campaign_id, t
             WHERE ci.sku = ANY(%(skus)s) AND ci.closed_at IS NULL
               AND (c.ends_at <= t.now OR c.cancelled_at IS NOT NULL)
        ), items AS (
            UPDATE inventory.campaign_items ci
               SET remaining = 0, returned = ci.returned + e.remaining, closed_at = e.closed
              FROM ending e WHERE ci.campaign_id = e.campaign_id AND ci.sku = e.sku
        ), per_sku AS (
            SELECT sku, sum(remaining)::int AS qty, min(now) AS now FROM ending GROUP BY sku
        ), stock AS (
            UPDATE inventory.stock s SET set_aside = s.set_aside - p.qty, updated_at = p.now
              FROM per_sku p WHERE s.sku = p.sku
            RETURNING s.sku, s.on_hand, s.reserved, s.set_aside + p.qty AS set_aside_before
        )
        INSERT INTO inventory.ledger (sku, reason, on_hand_delta, reserved_delta, on_hand_after,
                                      reserved_after, actor, created_at, set_aside_delta, set_aside_after, campaign_id)
        SELECT e.sku, 'CAMPAIGN_END', 0, 0, st.on_hand, st.reserved, %(actor)s, e.now, -e.remaining,
               st.set_aside_before - sum(e.remaining) OVER w, e.campaign_id
          FROM ending e JOIN stock st ON st.sku = e.sku
        WINDOW w AS (PARTITION BY e.sku ORDER BY e.closed, e.campaign_id)
         ORDER BY e.sku, e.closed, e.campaign_id
        """,
        dict(now=now, skus=skus, actor=actor),
    )


async def settle(conn: AsyncConnection, skus: list[str], now: datetime | None, actor: str) -> tuple[AsyncCursor,
                                                                                                      AsyncCursor]:
    """Brings the SKUs' stored figures up to `now` under their locks: expired holds reclaimed, then ended campaigns'
    quotas back in regular stock. Neither statement is waited for."""
    skus = sorted(set(skus))
    return (await reclaim_expired(conn, skus, now, actor), await close_ended_items(conn, skus, now, actor))


async def stock_rows(conn: AsyncConnection, skus: list[str]) -> dict[str, StockRow]:
    """The stored figures of the SKUs that have a row (exact once their expired holds are reclaimed)."""
    cur = await conn.execute("SELECT sku, on_hand, reserved, set_aside FROM inventory.stock WHERE sku = ANY(%s)",
                             (skus,))
    return {r[0]: StockRow(*r) for r in await cur.fetchall()}


async def effective_stock(conn: AsyncConnection, skus: list[str], now: datetime) -> dict[str, StockRow]:
    """The figures as of `now`, without a lock: holds past their expiry do not count, reclaimed or not; an ended
    campaign's quota is back in regular stock, closed or not; an expired quota hold that goes back to a quota still
    open counts as set aside (what the next write under the SKU's lock will store)."""
    cur = await conn.execute(
        """
        SELECT s.sku, s.on_hand,
               s.reserved - COALESCE(x.expired, 0),
               s.set_aside + COALESCE(x.to_quota, 0) - COALESCE(
                   (SELECT sum(ci.remaining) FROM inventory.campaign_items ci
                      JOIN inventory.campaigns c ON c.id = ci.campaign_id
                     WHERE ci.sku = s.sku AND ci.closed_at IS NULL
                       AND (c.ends_at <= %(now)s OR c.cancelled_at IS NOT NULL)), 0)
          FROM inventory.stock s
          LEFT JOIN LATERAL (
              SELECT sum(h.qty) AS expired,
                     sum(h.qty) FILTER (WHERE ci.closed_at IS NULL AND h.expires_at < c.ends_at
                                          AND c.ends_at > %(now)s AND c.cancelled_at IS NULL) AS to_quota
                FROM inventory.holds h
                LEFT JOIN inventory.campaign_items ci ON ci.campaign_id = h.campaign_id AND ci.sku = h.sku
                LEFT JOIN inventory.campaigns c ON c.id = h.campaign_id
               WHERE h.sku = s.sku AND h.state = 'ACTIVE' AND h.expires_at <= %(now)s) x ON true
         WHERE s.sku = ANY(%(skus)s)
        """,
        dict(skus=skus, now=now),
    )
    return {r[0]: StockRow(r[0], r[1], int(r[2]), int(r[3])) for r in await cur.fetchall()}


async def create_stock(conn: AsyncConnection, sku: str, now: datetime) -> None:
    """Creates an empty stock row; its units arrive through a ledgered movement."""
    await conn.execute(
        "INSERT INTO inventory.stock (sku, on_hand, reserved, updated_at) VALUES (%s, 0, 0, %s)", (sku, now)
    )


async def hold_skus(conn: AsyncConnection, ids: list[str]) -> dict[str, str]:
    """hold id -> its SKU, for the holds that exist (a hold's SKU never changes, so this is safe before locking)."""
    cur = await conn.execute("SELECT id::text, sku FROM inventory.holds WHERE id = ANY(%s::uuid[])", (ids,))
    return dict(await cur.fetchall())


async def get_holds(conn: AsyncConnection, ids: list[str]) -> dict[str, HoldRecord]:
    """The stored holds among `ids`."""
    cur = await conn.execute(f"SELECT {_HOLD_COLUMNS} FROM inventory.holds WHERE id = ANY(%s::uuid[])", (ids,))
    return {r[0]: HoldRecord(*r) for r in await cur.fetchall()}


async def link_replacement(conn: AsyncConnection, expired_id: str, replacement_id: str) -> None:
    """Remembers that an expired hold's units are held again by `replacement_id` (ExtendHolds)."""
    await conn.execute("UPDATE inventory.holds SET replaced_by = %s WHERE id = %s AND state = 'EXPIRED'",
                       (replacement_id, expired_id))


async def replacements(conn: AsyncConnection, ids: list[str]) -> dict[str, str]:
    """expired hold id -> the id of the newest hold that holds its units again, for those replaced."""
    cur = await conn.execute(
        """
        WITH RECURSIVE chain(start, id, depth) AS (
            SELECT id, replaced_by, 1 FROM inventory.holds WHERE id = ANY(%s::uuid[]) AND replaced_by IS NOT NULL
            UNION ALL
            SELECT c.start, h.replaced_by, c.depth + 1
              FROM chain c JOIN inventory.holds h ON h.id = c.id WHERE h.replaced_by IS NOT NULL AND c.depth < 100
        )
        SELECT DISTINCT ON (start) start::text, id::text FROM chain ORDER BY start, depth DESC
        """, (ids,))
    return dict(await cur.fetchall())


async def active_holds(conn: AsyncConnection, owner_prefix: str, made_before: datetime, after: str | None,
                       limit: int) -> list[HoldRecord]:
    """Active holds whose owner starts with `owner_prefix`, made before `made_before`, by id after `after`."""
    cur = await conn.execute(
        f"SELECT {_HOLD_COLUMNS} FROM inventory.holds"
        " WHERE state = 'ACTIVE' AND starts_with(owner, %s) AND created_at <= %s AND (%s::uuid IS NULL OR id > %s::uuid)"
        " ORDER BY id LIMIT %s",
        (owner_prefix, made_before, after, after, limit),
    )
    return [HoldRecord(*r) for r in await cur.fetchall()]


async def skus_to_settle(conn: AsyncConnection, now: datetime, limit: int) -> list[str]:
    """SKUs that have an active hold past its expiry or an open campaign item whose campaign has ended, for the
    sweeper."""
    cur = await conn.execute(
        """
        SELECT sku FROM (
            SELECT DISTINCT sku FROM inventory.holds WHERE state = 'ACTIVE' AND expires_at <= %(now)s
            UNION
            SELECT ci.sku FROM inventory.campaign_items ci JOIN inventory.campaigns c ON c.id = ci.campaign_id
             WHERE ci.closed_at IS NULL AND (c.ends_at <= %(now)s OR c.cancelled_at IS NOT NULL)
        ) s LIMIT %(limit)s
        """, dict(now=now, limit=limit))
    return [r[0] for r in await cur.fetchall()]


async def take_stock(conn: AsyncConnection, skus: list[str], hold_ids: list[str], buyers: list[str] | None,
                     fixed_now: datetime | None, actor: str) -> StockTake:
    """Locks the SKUs, fixes the transaction's decision instant (the database's clock after the locks, unless
    `fixed_now`), reclaims their expired holds and closes their ended campaigns' items as of that instant, and reads
    what a transaction starts from: their figures, their open campaign items with their windows, the holds its calls
    name, and the units the buyers its calls name already have, per SKU and per campaign item (with the buyers of
    those holds). In pipeline mode it is all one round trip."""
    await lock_skus(conn, skus)
    now = await conn.execute(
        "SELECT set_config('inventory.now', COALESCE(%s::timestamptz, clock_timestamp())::text, true)::timestamptz",
        (fixed_now,))
    reclaimed, _ = await settle(conn, skus, None, actor)
    stock = await conn.execute(
        "SELECT sku, on_hand, reserved, set_aside FROM inventory.stock WHERE sku = ANY(%s)", (skus,))
    items = await conn.execute(
        "SELECT ci.campaign_id::text, ci.sku, ci.sale_price, ci.max_per_user, ci.remaining, c.starts_at, c.ends_at"
        "  FROM inventory.campaign_items ci JOIN inventory.campaigns c ON c.id = ci.campaign_id"
        " WHERE ci.sku = ANY(%s) AND ci.closed_at IS NULL", (skus,))
    holds = await conn.execute(f"SELECT {_HOLD_COLUMNS} FROM inventory.holds WHERE id = ANY(%s::uuid[])",
                               (hold_ids,)) if hold_ids else None
    units = None
    if buyers is not None:
        units = await conn.execute(
            "SELECT sku, buyer, campaign_id::text, sum(qty)::int FROM inventory.holds"
            " WHERE sku = ANY(%(skus)s) AND state = ANY(%(counted)s)"
            "   AND buyer IN (SELECT unnest(%(buyers)s::text[])"
            "                 UNION SELECT buyer FROM inventory.holds WHERE id = ANY(%(ids)s::uuid[]))"
            " GROUP BY sku, buyer, campaign_id",
            dict(skus=skus, counted=list(COUNTED), buyers=buyers, ids=hold_ids))
    instant = await now.fetchone()
    # A SELECT of one expression without FROM: always exactly one row.
    assert instant is not None
    take = StockTake(
        now=instant[0],
        stock={r[0]: StockRow(*r) for r in await stock.fetchall()},
        holds={r[0]: HoldRecord(*r) for r in await holds.fetchall()} if holds is not None else {},
        buyer_units={},
        items={(r[0], r[1]): CampaignItem(*r) for r in await items.fetchall()},
    )
    if units is not None:
        for sku, buyer, campaign_id, n in await units.fetchall():
            take.buyer_units[(sku, buyer)] = take.buyer_units.get((sku, buyer), 0) + n
            if campaign_id is not None:
                take.campaign_units[(campaign_id, sku, buyer)] = n
    take.reclaimed = max(reclaimed.rowcount, 0)
    return take


async def write_take(conn: AsyncConnection, take: StockTake) -> None:
    """Writes what a transaction's calls decided: new holds, changed holds, each touched SKU's final figures, the
    campaign items' changes, the refusals counted, and one ledger entry per movement in the order decided. Nothing
    is waited for: in pipeline mode it all travels with the COMMIT. The arrays go in binary form (%b): psycopg
    renders a text array in Python, ten times slower."""
    now = take.now
    new = list(take.new_holds.values())
    if new:
        await conn.execute(
            "INSERT INTO inventory.holds (id, owner, sku, qty, state, expires_at, order_id, created_at, buyer, price,"
            "                             campaign_id)"
            " SELECT id, owner, sku, qty, 'ACTIVE', expires_at, order_id, %s, buyer, price, campaign_id"
            "   FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::int[], %b::timestamptz[], %b::text[], %b::text[],"
            "               %b::int[], %b::uuid[])"
            "     AS n(id, owner, sku, qty, expires_at, order_id, buyer, price, campaign_id)",
            (now, [h.id for h in new], [h.owner for h in new], [h.sku for h in new], [h.qty for h in new],
             [h.expires_at for h in new], [h.order_id for h in new], [h.buyer for h in new], [h.price for h in new],
             [h.campaign_id for h in new]))
        # A hold made and ended within the same transaction is written made, then changed below.
    changed = list(take.changed.values()) + [h for h in new if h.state != ACTIVE]
    if changed:
        await conn.execute(
            "UPDATE inventory.holds h"
            "   SET owner = c.owner, qty = c.qty, state = c.state, expires_at = c.expires_at, order_id = c.order_id,"
            "       ended_at = CASE WHEN c.state = 'ACTIVE' THEN NULL ELSE %s::timestamptz END"
            "  FROM unnest(%b::uuid[], %b::text[], %b::int[], %b::text[], %b::timestamptz[], %b::text[])"
            "    AS c(id, owner, qty, state, expires_at, order_id)"
            " WHERE h.id = c.id AND h.state = 'ACTIVE'",
            (now, [h.id for h in changed], [h.owner for h in changed], [h.qty for h in changed],
             [h.state for h in changed], [h.expires_at for h in changed], [h.order_id for h in changed]))
    if take.item_deltas:
        keys = list(take.item_deltas)
        await conn.execute(
            "UPDATE inventory.campaign_items ci SET remaining = ci.remaining + d.dr, returned = ci.returned + d.dt"
            "  FROM unnest(%b::uuid[], %b::text[], %b::int[], %b::int[]) AS d(campaign_id, sku, dr, dt)"
            " WHERE ci.campaign_id = d.campaign_id AND ci.sku = d.sku",
            ([k[0] for k in keys], [k[1] for k in keys], [take.item_deltas[k][0] for k in keys],
             [take.item_deltas[k][1] for k in keys]))
    if take.refusals:
        keys3 = list(take.refusals)
        await conn.execute(
            "INSERT INTO inventory.campaign_refusals AS r (campaign_id, sku, reason, refused)"
            " SELECT * FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::int[])"
            " ON CONFLICT (campaign_id, sku, reason) DO UPDATE SET refused = r.refused + excluded.refused",
            ([k[0] for k in keys3], [k[1] for k in keys3], [k[2] for k in keys3], [take.refusals[k] for k in keys3]))
    if not take.ledger:
        return
    touched = {m.sku: m for m in take.ledger}  # the last movement of each SKU has its final figures
    await conn.execute(
        "UPDATE inventory.stock s SET on_hand = f.on_hand, reserved = f.reserved, set_aside = f.set_aside,"
        "       updated_at = %s"
        "  FROM unnest(%b::text[], %b::int[], %b::int[], %b::int[]) AS f(sku, on_hand, reserved, set_aside)"
        " WHERE s.sku = f.sku",
        (now, list(touched), [m.on_hand_after for m in touched.values()],
         [m.reserved_after for m in touched.values()], [m.set_aside_after for m in touched.values()]))
    moves = take.ledger
    await conn.execute(
        "INSERT INTO inventory.ledger (sku, reason, on_hand_delta, reserved_delta, on_hand_after, reserved_after,"
        "                              actor, hold_id, order_id, created_at, set_aside_delta, set_aside_after,"
        "                              campaign_id)"
        " SELECT sku, reason, dh, dr, oh, r, actor, hold_id, order_id, %s, ds, sa, campaign_id"
        "   FROM unnest(%b::text[], %b::text[], %b::int[], %b::int[], %b::int[], %b::int[], %b::text[], %b::uuid[],"
        "               %b::text[], %b::int[], %b::int[], %b::uuid[])"
        "     WITH ORDINALITY AS m(sku, reason, dh, dr, oh, r, actor, hold_id, order_id, ds, sa, campaign_id, n)"
        "  ORDER BY n",
        (now, [m.sku for m in moves], [m.reason for m in moves], [m.on_hand_delta for m in moves],
         [m.reserved_delta for m in moves], [m.on_hand_after for m in moves], [m.reserved_after for m in moves],
         [m.actor for m in moves], [m.hold_id for m in moves], [m.order_id for m in moves],
         [m.set_aside_delta for m in moves], [m.set_aside_after for m in moves], [m.campaign_id for m in moves]))
