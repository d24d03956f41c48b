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
        SELECT s.sku, s.on_hand, s.reserved, COALESCE(sum(l.on_hand_delta), 0), COALESCE(sum(l.reserved_delta), 0)
          FROM inventory.stock s LEFT JOIN inventory.ledger l ON l.sku = s.sku
         GROUP BY s.sku, s.on_hand, s.reserved
        HAVING s.on_hand <> COALESCE(sum(l.on_hand_delta), 0) OR s.reserved <> COALESCE(sum(l.reserved_delta), 0)
        """,
        "{0}: stock row on_hand={1} reserved={2}, ledger replays to on_hand={3} reserved={4}",
    ),
    (
        # Every ledger entry follows from the one before it.
        """
        SELECT sku, id, on_hand_after, reserved_after, prev_on_hand + on_hand_delta, prev_reserved + reserved_delta
          FROM (SELECT *, COALESCE(lag(on_hand_after) OVER w, 0) AS prev_on_hand,
                          COALESCE(lag(reserved_after) OVER w, 0) AS prev_reserved
                  FROM inventory.ledger WINDOW w AS (PARTITION BY sku ORDER BY id)) l
         WHERE on_hand_after <> prev_on_hand + on_hand_delta OR reserved_after <> prev_reserved + reserved_delta
        """,
        "{0}: ledger entry {1} says on_hand={2} reserved={3}, the entries before it give {4} and {5}",
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
        # Nothing negative, nothing held beyond what is on hand.
        "SELECT sku, on_hand, reserved FROM inventory.stock WHERE on_hand < 0 OR reserved < 0 OR reserved > on_hand",
        "{0}: on_hand={1} reserved={2} breaks 0 <= reserved <= on_hand",
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
