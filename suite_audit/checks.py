"""The suite-wide audit: checks across the four schemas, read in one snapshot, one line per violation."""

from __future__ import annotations

import logging
import sys
from typing import NamedTuple

import psycopg
from psycopg import AsyncConnection

from inventory_svc import audit as inventory_audit

_LOGGER = logging.getLogger(__name__)

# The tag of the inventory's own checks (inventory_svc.audit), which run in the same snapshot.
INVENTORY_TAG = "inventory"


class Check(NamedTuple):
    """A query whose rows are violations, the tag that starts each line, and how to word a row."""

    tag: str
    query: str
    wording: str


# Units of paid orders per line, the base of the checks of units sold.
_PAID_ITEMS = """
    paid_items AS (
        SELECT o.id AS order_id, i.sku, i.qty
          FROM orders.orders o JOIN orders.items i ON i.order_id = o.id
         WHERE o.status = 'PAID'
    )
"""

CHECKS: list[Check] = [
    Check(
        # a. Units that left stock are the units of paid orders.
        "sold-mismatch",
        f"""
        WITH {_PAID_ITEMS},
        paid AS (SELECT sku, sum(qty) AS units FROM paid_items GROUP BY sku),
        sold AS (SELECT sku, sum(qty) AS units FROM inventory.holds WHERE state = 'COMMITTED' GROUP BY sku)
        SELECT sku, COALESCE(sold.units, 0), COALESCE(paid.units, 0)
          FROM sold FULL JOIN paid USING (sku)
         WHERE COALESCE(sold.units, 0) <> COALESCE(paid.units, 0)
         ORDER BY sku
        """,
        "{0}: {1} unit(s) left stock (committed holds), but paid orders hold {2}",
    ),
    Check(
        # a. The catalog counts the units of paid orders: those in its sales lines, those the outbox has
        # yet to deliver (in transit, not a violation) and those of orders it counted before it kept
        # lines (migration 0003 folded them into sales_imported). An order the catalog recorded whose
        # outbox entry is not marked delivered yet (the answer was lost) is the catalog's, not in transit.
        "catalog-mismatch",
        f"""
        WITH {_PAID_ITEMS},
        paid AS (SELECT sku, sum(qty) AS units FROM paid_items GROUP BY sku),
        counted AS (SELECT sku, sum(qty) AS units FROM catalog.sales_lines GROUP BY sku),
        in_transit AS (
            SELECT p.sku, sum(p.qty) AS units
              FROM paid_items p JOIN orders.outbox x ON x.order_id = p.order_id
             WHERE x.delivered_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM catalog.sales_recorded r WHERE r.order_id = p.order_id::text)
             GROUP BY p.sku
        ),
        not_itemized AS (
            SELECT p.sku, sum(p.qty) AS units
              FROM paid_items p JOIN catalog.sales_recorded r ON r.order_id = p.order_id::text
             WHERE NOT r.itemized
             GROUP BY p.sku
        )
        SELECT sku, COALESCE(paid.units, 0), COALESCE(counted.units, 0), COALESCE(in_transit.units, 0),
               COALESCE(not_itemized.units, 0)
          FROM paid FULL JOIN counted USING (sku) FULL JOIN in_transit USING (sku) FULL JOIN not_itemized USING (sku)
         WHERE COALESCE(paid.units, 0)
               <> COALESCE(counted.units, 0) + COALESCE(in_transit.units, 0) + COALESCE(not_itemized.units, 0)
         ORDER BY sku
        """,
        "{0}: paid orders hold {1} unit(s), but the catalog's sales lines count {2},"
        " with {3} on the way from the outbox and {4} counted before lines were kept",
    ),
    Check(
        # a. A product's units sold are the imported ones plus its sales lines.
        "sales-count",
        """
        WITH counted AS (SELECT sku, sum(qty) AS units FROM catalog.sales_lines GROUP BY sku)
        SELECT COALESCE(p.sku, c.sku),
               CASE WHEN p.sku IS NULL THEN 'no such product'
                    ELSE format('sales=%s minus sales_imported=%s is %s', p.sales, p.sales_imported,
                                p.sales - p.sales_imported) END,
               COALESCE(c.units, 0)
          FROM catalog.products p FULL JOIN counted c ON c.sku = p.sku
         WHERE p.sku IS NULL OR p.sales - p.sales_imported <> COALESCE(c.units, 0)
         ORDER BY 1
        """,
        "{0}: {1}, but its sales lines add up to {2}",
    ),
    Check(
        # b. An active hold keeps units from everyone else, so someone must be about to buy them. Past its
        # expiry it no longer counts (DESIGN.md, rule 4), whether or not a sweeper has ended it yet.
        "orphan-hold",
        """
        SELECT h.sku, h.id, h.qty, h.owner, h.expires_at
          FROM inventory.holds h
         WHERE h.state = 'ACTIVE' AND h.expires_at > now()
           AND NOT EXISTS (SELECT 1 FROM cart.lines c
                            WHERE c.hold_id = h.id AND c.sku = h.sku AND h.owner = 'cart:' || c.user_id)
           AND NOT EXISTS (SELECT 1 FROM orders.items i JOIN orders.orders o ON o.id = i.order_id
                            WHERE i.hold_id = h.id AND i.sku = h.sku AND i.qty = h.qty
                              AND o.status = 'PENDING_PAYMENT'
                              -- the order's own, or one of its payment attempts' (order:<id>/<payment id>)
                              AND (h.owner = 'order:' || o.id::text OR starts_with(h.owner, 'order:' || o.id::text || '/')))
         ORDER BY h.sku, h.id
        """,
        "{0}: active hold {1} of {2} unit(s) for {3} until {4} belongs to no cart line and no order awaiting payment",
    ),
    Check(
        # c. A paid order's units were sold from its holds.
        "paid-order-unsold",
        """
        SELECT o.id, i.sku, i.qty, i.hold_id,
               CASE WHEN h.id IS NULL THEN 'missing' ELSE format('%s with %s x %s', h.state, h.qty, h.sku) END
          FROM orders.orders o
          JOIN orders.items i ON i.order_id = o.id
          LEFT JOIN inventory.holds h ON h.id = i.hold_id
         WHERE o.status = 'PAID'
           AND (h.id IS NULL OR h.state <> 'COMMITTED' OR h.sku <> i.sku OR h.qty <> i.qty)
         ORDER BY o.id, i.position
        """,
        "{0}: its line of {2} x {1} names hold {3}, which is {4}, not COMMITTED with the line's SKU and quantity",
    ),
    Check(
        # c. Units are sold only for a paid order.
        "sold-without-paid-order",
        """
        SELECT h.sku, h.id, h.qty, h.owner
          FROM inventory.holds h
         WHERE h.state = 'COMMITTED'
           AND NOT EXISTS (SELECT 1 FROM orders.items i JOIN orders.orders o ON o.id = i.order_id
                            WHERE i.hold_id = h.id AND o.status = 'PAID')
         ORDER BY h.sku, h.id
        """,
        "{0}: committed hold {1} of {2} unit(s) for {3} belongs to no paid order",
    ),
    Check(
        # d. Money the provider kept is the total of the order it paid; every other charge was refunded.
        "charge-without-paid-order",
        """
        SELECT c.payment_id, c.amount,
               CASE WHEN o.id IS NULL THEN 'no payment attempt names it'
                    WHEN o.status <> 'PAID' THEN format('its order %s is %s', o.id, o.status)
                    WHEN o.payment_id <> c.payment_id THEN format('its order %s is paid by %s', o.id, o.payment_id)
                    ELSE format('its order %s totals %s', o.id, o.total) END
          FROM orders.provider_charges c
          LEFT JOIN orders.payments p ON p.payment_id = c.payment_id
          LEFT JOIN orders.orders o ON o.id = p.order_id
         WHERE c.refunded_at IS NULL
           AND (o.id IS NULL OR o.status <> 'PAID' OR o.payment_id <> c.payment_id OR o.total <> c.amount)
         ORDER BY c.payment_id
        """,
        "{0}: {1} charged and not refunded, but {2}",
    ),
    Check(
        # d. A paid order was paid once, by its own charge.
        "paid-order-charge",
        """
        SELECT o.id, o.payment_id, count(c.payment_id),
               COALESCE(string_agg(c.payment_id, ', ' ORDER BY c.payment_id), 'none')
          FROM orders.orders o
          LEFT JOIN orders.payments p ON p.order_id = o.id
          LEFT JOIN orders.provider_charges c ON c.payment_id = p.payment_id AND c.refunded_at IS NULL
         WHERE o.status = 'PAID'
         GROUP BY o.id, o.payment_id
        HAVING count(c.payment_id) <> 1 OR NOT COALESCE(bool_or(c.payment_id = o.payment_id), false)
         ORDER BY o.id
        """,
        "{0}: paid by {1}, but its charges not refunded are {3} ({2}), not exactly its own",
    ),
    Check(
        # e. Totals are fixed at checkout from the lines' prices (the prices their units were held at, f.): a paid
        # order's revenue is the sum of its lines.
        "order-total",
        """
        SELECT o.id, o.status, o.total, sum(i.price::bigint * i.qty)
          FROM orders.orders o JOIN orders.items i ON i.order_id = o.id
         GROUP BY o.id
        HAVING o.total <> sum(i.price::bigint * i.qty)
         ORDER BY o.id
        """,
        "{0}: {1} order totals {2}, but its lines add up to {3}",
    ),
    Check(
        # f. An order line's price and campaign are its hold's (one owner per fact: the hold keeps the price its
        # units were held at; the cart and the order copy it). A hold without a price (NULL or 0: made before
        # prices were held with the units) is ordered at the catalog's price, so its line's price is not checked;
        # its campaign still is.
        "order-line-hold",
        """
        SELECT o.id, i.sku, i.price, COALESCE(i.campaign_id::text, 'none'), i.hold_id,
               CASE WHEN h.id IS NULL THEN 'missing'
                    ELSE format('at %s of campaign %s', COALESCE(h.price::text, 'no price'),
                                COALESCE(h.campaign_id::text, 'none')) END
          FROM orders.orders o
          JOIN orders.items i ON i.order_id = o.id
          LEFT JOIN inventory.holds h ON h.id = i.hold_id
         WHERE h.id IS NULL
            OR (h.price > 0 AND h.price <> i.price)
            OR h.campaign_id IS DISTINCT FROM i.campaign_id
         ORDER BY o.id, i.position
        """,
        "{0}: its line of {1} at {2} of campaign {3} names hold {4}, which is {5}",
    ),
    Check(
        # f. A line from a campaign's quota was held while the campaign ran, at its sale price: its campaign has an
        # item of its SKU, whose window [starts_at, ends_at) contained the hold's creation.
        "campaign-line",
        """
        SELECT o.id, i.sku, i.campaign_id, i.price,
               CASE WHEN ci.sku IS NULL THEN 'the campaign has no item of that SKU'
                    WHEN h.id IS NULL THEN 'its hold is missing'
                    WHEN NOT (h.created_at >= c.starts_at AND h.created_at < c.ends_at)
                         THEN format('its hold was made at %s, outside the window %s .. %s', h.created_at,
                                     c.starts_at, c.ends_at)
                    ELSE format('the sale price is %s', ci.sale_price) END
          FROM orders.orders o
          JOIN orders.items i ON i.order_id = o.id
          LEFT JOIN inventory.campaign_items ci ON ci.campaign_id = i.campaign_id AND ci.sku = i.sku
          LEFT JOIN inventory.campaigns c ON c.id = i.campaign_id
          LEFT JOIN inventory.holds h ON h.id = i.hold_id
         WHERE i.campaign_id IS NOT NULL
           AND (ci.sku IS NULL OR h.id IS NULL OR i.price <> ci.sale_price
                OR NOT (h.created_at >= c.starts_at AND h.created_at < c.ends_at))
         ORDER BY o.id, i.position
        """,
        "{0}: its line of {1} from campaign {2} at {3}, but {4}",
    ),
    Check(
        # f. Every unit of a campaign item's quota is in exactly one place: still set aside (remaining), back in
        # regular stock (returned), held (its ACTIVE holds, until reclaimed) or sold (its COMMITTED holds).
        "campaign-quota",
        """
        WITH units AS (
            SELECT campaign_id, sku,
                   sum(qty) FILTER (WHERE state = 'ACTIVE') AS held,
                   sum(qty) FILTER (WHERE state = 'COMMITTED') AS sold
              FROM inventory.holds WHERE campaign_id IS NOT NULL
             GROUP BY campaign_id, sku
        )
        SELECT ci.campaign_id, ci.sku, ci.quota, ci.remaining, COALESCE(u.held, 0), COALESCE(u.sold, 0), ci.returned
          FROM inventory.campaign_items ci
          LEFT JOIN units u ON u.campaign_id = ci.campaign_id AND u.sku = ci.sku
         WHERE ci.quota <> ci.remaining + COALESCE(u.held, 0) + COALESCE(u.sold, 0) + ci.returned
         ORDER BY ci.campaign_id, ci.sku
        """,
        "{0}: the quota of {1} is {2}, but remaining {3} + held {4} + sold {5} + returned {6} differ",
    ),
    Check(
        # e. A checkout of an empty cart is refused, so every order has a line.
        "order-empty",
        """
        SELECT o.id, o.status FROM orders.orders o
         WHERE NOT EXISTS (SELECT 1 FROM orders.items i WHERE i.order_id = o.id)
         ORDER BY o.id
        """,
        "{0}: {1} order has no lines",
    ),
]

# What the audit looked at, for its summary.
_COUNTS = """
    SELECT (SELECT count(*) FROM (SELECT sku FROM inventory.stock UNION SELECT sku FROM catalog.products) s),
           (SELECT count(*) FROM inventory.holds),
           (SELECT count(*) FROM orders.orders),
           (SELECT count(*) FROM orders.provider_charges)
"""


class Checked(NamedTuple):
    """How much one audit looked at, and what it found."""

    skus: int
    holds: int
    orders: int
    charges: int
    violations: list[str]


async def _audit(conn: AsyncConnection) -> Checked:
    async with conn.transaction():
        # One snapshot for every check, so a write between two of them cannot look like a violation.
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        violations = [f"{INVENTORY_TAG} {line}" for line in await inventory_audit.run_checks(conn)]
        for check in CHECKS:
            cur = await conn.execute(check.query)
            found = [f"{check.tag} {check.wording.format(*row)}" for row in await cur.fetchall()]
            _LOGGER.debug("check %s: %d violation(s)", check.tag, len(found))
            violations += found
        cur = await conn.execute(_COUNTS)
        row = await cur.fetchone()
        assert row is not None  # counts answer one row
        skus, holds, orders, charges = row
    return Checked(skus, holds, orders, charges, violations)


async def audit_suite(conn: AsyncConnection) -> list[str]:
    """Every violation found in the database of all four schemas, one line each, starting with its tag.

    Meant for a quiet suite: a purchase under way (a charge before its order is marked paid, a hold
    moving from a cart to an order) shows as a violation until it finishes or a reconciler repairs it.
    """
    return (await _audit(conn)).violations


async def run(dsn: str) -> int:
    """Audits the database of `dsn`: violations to stdout, a summary to stderr; 1 if there is any, else 0."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        checked = await _audit(conn)
    for line in checked.violations:
        print(line)
    print(f"suite audit: checked {checked.skus} SKUs, {checked.holds} holds, {checked.orders} orders,"
          f" {checked.charges} charges; {len(checked.violations)} violation(s)", file=sys.stderr)
    return 1 if checked.violations else 0
