"""Proves the stock figures: `python -m inventory_svc.audit` prints one line per violation and exits 1 if any."""

from __future__ import annotations

import asyncio
import sys

import psycopg
from psycopg import AsyncConnection

from shop_runtime.config import ConfigError, env_str

# Each check is a query whose rows are violations, and how to word one.
CHECKS: list[tuple[str, str]] = [
    (
        # The ledger replays to the stock row.
        """
        SELECT s.sku, s.on_hand, s.reserved, s.set_aside, COALESCE(sum(l.on_hand_delta), 0),
               COALESCE(sum(l.reserved_delta), 0), COALESCE(sum(l.set_aside_delta), 0)
          FROM inventory.stock s LEFT JOIN inventory.ledger l ON l.sku = s.sku
         GROUP BY s.sku, s.on_hand, s.reserved, s.set_aside
        HAVING s.on_hand <> COALESCE(sum(l.on_hand_delta), 0) OR s.reserved <> COALESCE(sum(l.reserved_delta), 0)
            OR s.set_aside <> COALESCE(sum(l.set_aside_delta), 0)
        """,
        "{0}: stock row on_hand={1} reserved={2} set_aside={3}, ledger replays to on_hand={4} reserved={5}"
        " set_aside={6}",
    ),
    (
        # Every ledger entry follows from the one before it.
        """
        SELECT sku, id, on_hand_after, reserved_after, set_aside_after, prev_on_hand + on_hand_delta,
               prev_reserved + reserved_delta, prev_set_aside + set_aside_delta
          FROM (SELECT *, COALESCE(lag(on_hand_after) OVER w, 0) AS prev_on_hand,
                          COALESCE(lag(reserved_after) OVER w, 0) AS prev_reserved,
                          COALESCE(lag(set_aside_after) OVER w, 0) AS prev_set_aside
                  FROM inventory.ledger WINDOW w AS (PARTITION BY sku ORDER BY id)) l
         WHERE on_hand_after <> prev_on_hand + on_hand_delta OR reserved_after <> prev_reserved + reserved_delta
            OR set_aside_after <> prev_set_aside + set_aside_delta
        """,
        "{0}: ledger entry {1} says on_hand={2} reserved={3} set_aside={4}, the entries before it give {5}, {6}"
        " and {7}",
    ),
    (
        # Held units are exactly the active holds.
        """
        SELECT s.sku, s.reserved, COALESCE(sum(h.qty), 0)
          FROM inventory.stock s LEFT JOIN inventory.holds h ON h.sku = s.sku AND h.state = 'ACTIVE'
         GROUP BY s.sku, s.reserved HAVING s.reserved <> COALESCE(sum(h.qty), 0)
        """,
        "{0}: reserved={1} but active holds add up to {2}",
    ),
    (
        # Nothing negative, nothing held or set aside beyond what is on hand.
        "SELECT sku, on_hand, reserved, set_aside FROM inventory.stock"
        " WHERE on_hand < 0 OR reserved < 0 OR set_aside < 0 OR reserved + set_aside > on_hand",
        "{0}: on_hand={1} reserved={2} set_aside={3} breaks 0 <= reserved, 0 <= set_aside, reserved + set_aside"
        " <= on_hand",
    ),
    (
        # Conservation: what came in (initial stock, stock set, adjustments by delta) is on hand or sold.
        """
        SELECT s.sku, s.on_hand, COALESCE(i.came_in, 0), COALESCE(c.sold, 0)
          FROM inventory.stock s
          LEFT JOIN (SELECT sku, sum(on_hand_delta) AS came_in FROM inventory.ledger
                      WHERE reason IN ('INITIAL', 'ADJUST', 'RESTOCK', 'DAMAGED', 'RETURNED', 'CORRECTION')
                      GROUP BY sku) i ON i.sku = s.sku
          LEFT JOIN (SELECT sku, sum(qty) AS sold FROM inventory.holds WHERE state = 'COMMITTED' GROUP BY sku) c
                 ON c.sku = s.sku
         WHERE COALESCE(i.came_in, 0) <> s.on_hand + COALESCE(c.sold, 0)
        """,
        "{0}: {2} units came in, but on_hand={1} plus {3} sold does not add up",
    ),
    (
        # Every hold ended exactly once, and the ledger says so.
        """
        SELECT h.id, h.state, count(l.id)
          FROM inventory.holds h
          LEFT JOIN inventory.ledger l ON l.hold_id = h.id AND l.reason IN ('RELEASE', 'EXPIRE', 'COMMIT')
         GROUP BY h.id, h.state HAVING count(l.id) <> CASE WHEN h.state = 'ACTIVE' THEN 0 ELSE 1 END
        """,
        "hold {0} is {1} with {2} ending ledger entries (expected exactly one ending, none if active)",
    ),
    (
        # Every hold is fully applied: its ledger entries hold exactly its units while active, none after.
        """
        SELECT h.id, h.state, h.qty, COALESCE(sum(l.reserved_delta), 0)
          FROM inventory.holds h LEFT JOIN inventory.ledger l ON l.hold_id = h.id
         GROUP BY h.id, h.state, h.qty
        HAVING COALESCE(sum(l.reserved_delta), 0) <> CASE WHEN h.state = 'ACTIVE' THEN h.qty ELSE 0 END
        """,
        "hold {0} ({1}, qty {2}) has ledger entries holding {3} units",
    ),
    (
        # Set-aside units are exactly what is left of the quotas of open campaign items.
        """
        SELECT s.sku, s.set_aside, COALESCE(sum(ci.remaining), 0)
          FROM inventory.stock s LEFT JOIN inventory.campaign_items ci ON ci.sku = s.sku AND ci.closed_at IS NULL
         GROUP BY s.sku, s.set_aside HAVING s.set_aside <> COALESCE(sum(ci.remaining), 0)
        """,
        "{0}: set_aside={1} but the open campaign items have {2} remaining",
    ),
    (
        # Every unit of a quota is somewhere: remaining, held (active holds), sold (committed) or back in regular
        # stock (returned). Stored figures: an expired hold not yet reclaimed still counts as held.
        """
        SELECT ci.campaign_id, ci.sku, ci.quota, ci.remaining, COALESCE(h.held, 0), COALESCE(h.sold, 0), ci.returned
          FROM inventory.campaign_items ci
          LEFT JOIN (SELECT campaign_id, sku, sum(qty) FILTER (WHERE state = 'ACTIVE') AS held,
                            sum(qty) FILTER (WHERE state = 'COMMITTED') AS sold
                       FROM inventory.holds WHERE campaign_id IS NOT NULL GROUP BY campaign_id, sku) h
                 ON h.campaign_id = ci.campaign_id AND h.sku = ci.sku
         WHERE ci.quota <> ci.remaining + COALESCE(h.held, 0) + COALESCE(h.sold, 0) + ci.returned
        """,
        "campaign {0} {1}: quota {2} but remaining {3} + held {4} + sold {5} + returned {6} differ",
    ),
    (
        # A quota's units are held at its sale price, and only inside its campaign's window.
        """
        SELECT h.id, h.campaign_id, h.sku, h.price, ci.sale_price, h.created_at, c.starts_at, c.ends_at
          FROM inventory.holds h
          JOIN inventory.campaign_items ci ON ci.campaign_id = h.campaign_id AND ci.sku = h.sku
          JOIN inventory.campaigns c ON c.id = h.campaign_id
         WHERE h.price IS DISTINCT FROM ci.sale_price OR h.created_at < c.starts_at OR h.created_at >= c.ends_at
        """,
        "hold {0} of campaign {1} {2}: price {3} (sale price {4}), made {5}, outside or off [{6}, {7})",
    ),
    (
        # A closed item has given everything left back.
        "SELECT campaign_id, sku, remaining FROM inventory.campaign_items WHERE closed_at IS NOT NULL AND remaining <> 0",
        "campaign {0} {1}: closed with {2} remaining",
    ),
]


async def run_checks(conn: AsyncConnection) -> list[str]:
    """Every violation of the inventory rules, one line each, read in the caller's transaction.

    Taking the snapshot is the caller's part, so a wider audit can run these checks in its own.
    """
    violations = []
    for query, wording in CHECKS:
        cur = await conn.execute(query)
        violations += [wording.format(*row) for row in await cur.fetchall()]
    return violations


async def audit(conn: AsyncConnection) -> list[str]:
    """Every violation of the inventory rules found in the database, one line each."""
    async with conn.transaction():
        # One snapshot for all checks, so a concurrent write cannot look like a violation.
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return await run_checks(conn)


async def run(dsn: str) -> int:
    """Audits the database of `dsn`, prints the violations; the exit code is 1 if there is any."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        violations = await audit(conn)
        cur = await conn.execute("SELECT count(*), (SELECT count(*) FROM inventory.holds) FROM inventory.stock")
        row = await cur.fetchone()
        # Aggregates without GROUP BY: always exactly one row, even over empty tables.
        assert row is not None
        skus, holds = row
    for line in violations:
        print(line)
    print(f"audit: {skus} SKUs, {holds} holds, {len(violations)} violation(s)", file=sys.stderr)
    return 1 if violations else 0


def main() -> None:
    """Entry point: INVENTORY_DATABASE_URL or DATABASE_URL names the database."""
    try:
        dsn = env_str("INVENTORY_DATABASE_URL", "") or env_str("DATABASE_URL")
    except ConfigError as err:
        print(f"audit: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(asyncio.run(run(dsn)))


if __name__ == "__main__":
    main()
