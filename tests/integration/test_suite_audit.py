"""The suite audit against real Postgres: clean on a consistent suite, one tagged line per seeded inconsistency."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from catalog_svc import repository as catalog_repository
from catalog_svc.server import SPEC as CATALOG
from devstack.prepare import migrate_all
from shop_runtime.db import migrate
from tests.audit import audit_dsn

A, B = "AU-0001", "AU-0002"
PRICE_A, PRICE_B = 1000, 2500
CART_HOLD = str(uuid.uuid4())        # alice's cart line: 2 x A, active
PENDING_HOLD = str(uuid.uuid4())     # bob's order awaiting payment: 1 x A, active
PAID_HOLD_A = str(uuid.uuid4())      # carol's paid order: 3 x A, committed
PAID_HOLD_B = str(uuid.uuid4())      # carol's paid order: 1 x B, committed
PENDING_ORDER = str(uuid.uuid4())
PAID_ORDER = str(uuid.uuid4())
PAID_PAYMENT = "pay_carol"
IMPORTED_A = 10                      # units of A sold before this suite's orders


def execute(dsn: str, *statements: tuple[str, tuple] | str) -> None:
    """Runs statements in one transaction."""
    with psycopg.connect(dsn) as conn:
        for statement in statements:
            query, params = (statement, ()) if isinstance(statement, str) else statement
            conn.execute(query, params)


def move(sku: str, reason: str, on_hand_delta: int, reserved_delta: int, hold_id: str | None = None,
         order_id: str | None = None) -> tuple[str, tuple]:
    """A stock change and its ledger entry, as inventory_svc.repository._MOVE writes them."""
    return ("""
        WITH s AS (
            UPDATE inventory.stock SET on_hand = on_hand + %(dh)s, reserved = reserved + %(dr)s WHERE sku = %(sku)s
            RETURNING sku, on_hand, reserved, set_aside
        )
        INSERT INTO inventory.ledger (sku, reason, on_hand_delta, reserved_delta, on_hand_after, reserved_after,
                                      set_aside_after, actor, hold_id, order_id)
        SELECT sku, %(reason)s, %(dh)s, %(dr)s, on_hand, reserved, set_aside, 'test', %(hold)s, %(order)s FROM s
        """, dict(sku=sku, reason=reason, dh=on_hand_delta, dr=reserved_delta, hold=hold_id, order=order_id))


def new_hold(hold_id: str, owner: str, sku: str, qty: int, *, order_id: str | None = None,
             expires: str = "now() + interval '10 minutes'") -> list[tuple[str, tuple]]:
    """An active hold and the ledger entry that takes its units."""
    return [
        (f"INSERT INTO inventory.holds (id, owner, sku, qty, state, expires_at, order_id, created_at)"
         f" VALUES (%s, %s, %s, %s, 'ACTIVE', {expires}, %s, now())", (hold_id, owner, sku, qty, order_id)),
        move(sku, "HOLD", 0, qty, hold_id, order_id),
    ]


def commit_hold(hold_id: str, sku: str, qty: int, order_id: str | None = None) -> list[tuple[str, tuple]]:
    """Sells an active hold's units, as inventory's CommitHolds does."""
    return [
        ("UPDATE inventory.holds SET state = 'COMMITTED', ended_at = now() WHERE id = %s", (hold_id,)),
        move(sku, "COMMIT", -qty, -qty, hold_id, order_id),
    ]


def new_order(order_id: str, user: str, status: str, lines: list[tuple[str, int, int, str]],
              payment_id: str | None = None) -> list[tuple[str, tuple]]:
    """An order with its lines (sku, price, qty, hold id); a paid one with its payment attempt and charge."""
    total = sum(price * qty for _, price, qty, _ in lines)
    paid = status == "PAID"
    statements = [
        ("INSERT INTO orders.orders (id, user_id, status, total, currency, pay_before, created_at, payment_id, paid_at)"
         " VALUES (%s, %s, %s, %s, 'IDR', now() + interval '15 minutes', now(), %s, CASE WHEN %s THEN now() END)",
         (order_id, user, status, total, payment_id if paid else None, paid)),
    ] + [
        ("INSERT INTO orders.items (order_id, position, sku, name, price, qty, hold_id)"
         " VALUES (%s, %s, %s, %s, %s, %s, %s)", (order_id, position, sku, f"product {sku}", price, qty, hold))
        for position, (sku, price, qty, hold) in enumerate(lines)
    ]
    if payment_id:
        statements += [payment(user, order_id, payment_id, "SUCCEEDED" if paid else "PENDING"),
                       charge(payment_id, total)]
    return statements


def payment(user: str, order_id: str, payment_id: str, state: str) -> tuple[str, tuple]:
    return ("INSERT INTO orders.payments (user_id, idempotency_key, request_hash, order_id, payment_id, state)"
            " VALUES (%s, %s, '\\x00', %s, %s, %s)", (user, f"key-{payment_id}", order_id, payment_id, state))


def charge(payment_id: str, amount: int) -> tuple[str, tuple]:
    return ("INSERT INTO orders.provider_charges (payment_id, amount, token) VALUES (%s, %s, 'tok_visa')",
            (payment_id, amount))


def sales_delivered(order_id: str, lines: dict[str, int]) -> list[tuple[str, tuple]]:
    """The outbox entry of a paid order, delivered: the catalog recorded the order, its lines and counts."""
    return [
        ("INSERT INTO orders.outbox (order_id, payload, delivered_at) VALUES (%s, '\\x00', now())", (order_id,)),
        ("INSERT INTO catalog.sales_recorded (order_id) VALUES (%s)", (order_id,)),
    ] + [
        stmt for sku, qty in lines.items() for stmt in (
            ("INSERT INTO catalog.sales_lines (order_id, sku, qty) VALUES (%s, %s, %s)", (order_id, sku, qty)),
            ("UPDATE catalog.products SET sales = sales + %s WHERE sku = %s", (qty, sku)),
        )
    ]


@pytest.fixture
async def suite_dsn(fresh_dsn) -> str:
    """A database of all four schemas holding a consistent suite: stock of A and B; alice's cart line of
    2 x A; bob's order of 1 x A awaiting payment; carol's paid order of 3 x A and 1 x B, delivered to
    the catalog. Ledger: A 20 in, 6 held, 3 sold (on hand 17, reserved 3); B 5 in, 1 sold."""
    await migrate_all(fresh_dsn)
    execute(
        fresh_dsn,
        "INSERT INTO catalog.categories (slug, name) VALUES ('audit', 'Audit')",
        ("INSERT INTO catalog.products (sku, name, category, price, sales, sales_imported)"
         " VALUES (%s, 'A', 'audit', %s, %s, %s), (%s, 'B', 'audit', %s, 0, 0)",
         (A, PRICE_A, IMPORTED_A, IMPORTED_A, B, PRICE_B)),
        ("INSERT INTO inventory.stock (sku, on_hand, reserved) VALUES (%s, 0, 0), (%s, 0, 0)", (A, B)),
        move(A, "INITIAL", 20, 0),
        move(B, "INITIAL", 5, 0),
        *new_hold(CART_HOLD, "cart:alice", A, 2),
        ("INSERT INTO cart.lines (user_id, sku, qty, hold_id, reserved_until, added_at)"
         " VALUES ('alice', %s, 2, %s, now() + interval '10 minutes', now())", (A, CART_HOLD)),
        *new_hold(PENDING_HOLD, f"order:{PENDING_ORDER}", A, 1, order_id=PENDING_ORDER),
        *new_order(PENDING_ORDER, "bob", "PENDING_PAYMENT", [(A, PRICE_A, 1, PENDING_HOLD)]),
        *new_hold(PAID_HOLD_A, f"order:{PAID_ORDER}", A, 3, order_id=PAID_ORDER),
        *new_hold(PAID_HOLD_B, f"order:{PAID_ORDER}", B, 1, order_id=PAID_ORDER),
        *commit_hold(PAID_HOLD_A, A, 3, PAID_ORDER),
        *commit_hold(PAID_HOLD_B, B, 1, PAID_ORDER),
        *new_order(PAID_ORDER, "carol", "PAID", [(A, PRICE_A, 3, PAID_HOLD_A), (B, PRICE_B, 1, PAID_HOLD_B)],
                   payment_id=PAID_PAYMENT),
        *sales_delivered(PAID_ORDER, {A: 3, B: 1}),
    )
    return fresh_dsn


async def test_a_consistent_suite_is_clean(suite_dsn):
    assert audit_dsn(suite_dsn) == []


async def test_the_audit_runs_inside_a_running_event_loop(suite_dsn):
    # audit_dsn brings its own loop, so an async test (as here) can call it directly.
    assert audit_dsn(suite_dsn) == []


OTHER_ORDER = str(uuid.uuid4())
EXTRA_HOLD = str(uuid.uuid4())

# kind -> (the one inconsistency seeded into the consistent suite, tag, what the line must also name)
SEEDS = {
    # 4 units of A in carol's paid order, 3 sold from stock (the price keeps the total right).
    "sold units != paid units": (
        [("UPDATE orders.items SET qty = 4, price = 750 WHERE order_id = %s AND sku = %s", (PAID_ORDER, A))],
        "sold-mismatch", A),
    # The catalog lost the line of B (and its count): paid 1, counted 0, nothing in transit.
    "catalog sales != paid units": (
        [("DELETE FROM catalog.sales_lines WHERE order_id = %s AND sku = %s", (PAID_ORDER, B)),
         ("UPDATE catalog.products SET sales = sales - 1 WHERE sku = %s", (B,))],
        "catalog-mismatch", B),
    "products.sales != imported + sales lines": (
        [("UPDATE catalog.products SET sales = sales + 1 WHERE sku = %s", (A,))],
        "sales-count", A),
    "orphan active hold": (
        ["DELETE FROM cart.lines WHERE user_id = 'alice'"],
        "orphan-hold", CART_HOLD),
    "cart line of another user": (
        [("UPDATE inventory.holds SET owner = 'cart:mallory' WHERE id = %s", (CART_HOLD,))],
        "orphan-hold", CART_HOLD),
    "order hold of an expired order": (
        [("UPDATE orders.orders SET status = 'EXPIRED' WHERE id = %s", (PENDING_ORDER,))],
        "orphan-hold", PENDING_HOLD),
    # Bob's order paid, charged and delivered, but its hold never committed.
    "paid order whose hold is not committed": (
        [("UPDATE orders.orders SET status = 'PAID', payment_id = 'pay_bob', paid_at = now() WHERE id = %s",
          (PENDING_ORDER,)),
         payment("bob", PENDING_ORDER, "pay_bob", "SUCCEEDED"), charge("pay_bob", PRICE_A)],
        "paid-order-unsold", PENDING_ORDER),
    "committed hold with no paid order": (
        [*new_hold(EXTRA_HOLD, "cart:dave", A, 1), *commit_hold(EXTRA_HOLD, A, 1)],
        "sold-without-paid-order", EXTRA_HOLD),
    # A payment attempt of bob's (unpaid) order charged and never refunded.
    "unrefunded charge with no paid order": (
        [payment("bob", PENDING_ORDER, "pay_lost", "PENDING"), charge("pay_lost", PRICE_A)],
        "charge-without-paid-order", "pay_lost"),
    "charge with no payment attempt": (
        [charge("pay_stray", PRICE_A)],
        "charge-without-paid-order", "pay_stray"),
    "paid order with no charge": (
        [("UPDATE orders.provider_charges SET refunded_at = now() WHERE payment_id = %s", (PAID_PAYMENT,))],
        "paid-order-charge", PAID_ORDER),
    "paid order charged twice": (
        [payment("carol", PAID_ORDER, "pay_twice", "PENDING"), charge("pay_twice", PRICE_A * 3 + PRICE_B)],
        "paid-order-charge", PAID_ORDER),
    "order total != lines": (
        [("UPDATE orders.orders SET total = total + 1 WHERE id = %s", (PENDING_ORDER,))],
        "order-total", PENDING_ORDER),
    "order with no lines": (
        [("INSERT INTO orders.orders (id, user_id, status, total, currency, pay_before, created_at)"
          " VALUES (%s, 'erin', 'EXPIRED', 0, 'IDR', now(), now())", (OTHER_ORDER,))],
        "order-empty", OTHER_ORDER),
    # The inventory's own checks run too: a stock row the ledger does not replay to.
    "inventory rules": (
        [("UPDATE inventory.stock SET on_hand = on_hand + 1 WHERE sku = %s", (A,))],
        "inventory", A),
}


@pytest.mark.parametrize("kind", list(SEEDS))
async def test_each_inconsistency_is_found_and_tagged(suite_dsn, kind):
    statements, tag, subject = SEEDS[kind]
    execute(suite_dsn, *statements)
    found = audit_dsn(suite_dsn)
    assert any(line.startswith(f"{tag} ") and subject in line for line in found), found


async def test_units_paid_but_not_yet_delivered_to_the_catalog_are_in_transit(suite_dsn):
    # Carol's order as it is before the outbox delivered it: nothing in the catalog yet.
    execute(
        suite_dsn,
        ("UPDATE orders.outbox SET delivered_at = NULL WHERE order_id = %s", (PAID_ORDER,)),
        ("DELETE FROM catalog.sales_lines WHERE order_id = %s", (PAID_ORDER,)),
        ("DELETE FROM catalog.sales_recorded WHERE order_id = %s", (PAID_ORDER,)),
        ("UPDATE catalog.products SET sales = sales_imported WHERE sku = ANY(%s)", ([A, B],)),
    )
    assert audit_dsn(suite_dsn) == []


async def test_units_the_catalog_recorded_before_delivery_was_marked_count_once(suite_dsn):
    # The catalog recorded carol's order but the outbox's mark was lost: not in transit a second time.
    execute(suite_dsn, ("UPDATE orders.outbox SET delivered_at = NULL WHERE order_id = %s", (PAID_ORDER,)))
    assert audit_dsn(suite_dsn) == []


async def test_a_paid_order_with_no_outbox_entry_is_never_counted(suite_dsn):
    execute(
        suite_dsn,
        ("DELETE FROM orders.outbox WHERE order_id = %s", (PAID_ORDER,)),
        ("DELETE FROM catalog.sales_lines WHERE order_id = %s", (PAID_ORDER,)),
        ("DELETE FROM catalog.sales_recorded WHERE order_id = %s", (PAID_ORDER,)),
        ("UPDATE catalog.products SET sales = sales_imported WHERE sku = ANY(%s)", ([A, B],)),
    )
    found = audit_dsn(suite_dsn)
    assert {line.split(":")[0] for line in found} == {f"catalog-mismatch {A}", f"catalog-mismatch {B}"}, found


async def test_orders_counted_before_sales_lines_were_kept_are_in_sales_imported(suite_dsn):
    # As migration 0003 leaves an order counted before it: recorded, not itemized, its units imported.
    execute(
        suite_dsn,
        ("DELETE FROM catalog.sales_lines WHERE order_id = %s", (PAID_ORDER,)),
        ("UPDATE catalog.sales_recorded SET itemized = false WHERE order_id = %s", (PAID_ORDER,)),
        ("UPDATE catalog.products SET sales_imported = sales WHERE sku = ANY(%s)", ([A, B],)),
    )
    assert audit_dsn(suite_dsn) == []


async def test_the_catalog_records_an_orders_lines_once_summing_a_sku_named_twice(suite_dsn):
    order = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(suite_dsn) as conn:
        async with conn.transaction():
            assert await catalog_repository.record_sales(conn, order, [(A, 1), (B, 2), (A, 3)])
        async with conn.transaction():
            assert not await catalog_repository.record_sales(conn, order, [(A, 1), (B, 2), (A, 3)])
        cur = await conn.execute("SELECT sku, qty FROM catalog.sales_lines WHERE order_id = %s ORDER BY sku", (order,))
        assert await cur.fetchall() == [(A, 4), (B, 2)]
        cur = await conn.execute("SELECT sku, sales - sales_imported FROM catalog.products ORDER BY sku")
        assert await cur.fetchall() == [(A, 3 + 4), (B, 1 + 2)]
    # Its sales lines and counts agree; only the order book knows no such paid order.
    assert {line.split(" ")[0] for line in audit_dsn(suite_dsn)} == {"catalog-mismatch"}


async def test_migration_0003_folds_units_counted_before_it_into_sales_imported(fresh_dsn, tmp_path):
    for path in sorted(CATALOG.migrations.glob("*.sql")):
        if path.stem < "0003":
            (tmp_path / path.name).write_text(path.read_text())
    await migrate(fresh_dsn, "catalog", tmp_path)
    execute(fresh_dsn, "INSERT INTO catalog.categories (slug, name) VALUES ('audit', 'Audit')",
            ("INSERT INTO catalog.products (sku, name, category, price, sales) VALUES (%s, 'A', 'audit', 1, 7)", (A,)),
            "INSERT INTO catalog.sales_recorded (order_id) VALUES ('before')")
    assert "0003_sales_lines" in await migrate(fresh_dsn, "catalog", CATALOG.migrations)
    execute(fresh_dsn, "INSERT INTO catalog.sales_recorded (order_id) VALUES ('after')")
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT sales, sales_imported FROM catalog.products").fetchall() == [(7, 7)]
        assert conn.execute("SELECT order_id, itemized FROM catalog.sales_recorded ORDER BY order_id").fetchall() == [
            ("after", True), ("before", False)]


async def test_an_active_hold_past_its_expiry_is_no_orphan(suite_dsn):
    # Not yet ended by a sweeper, but it no longer keeps units from anyone.
    execute(
        suite_dsn,
        "DELETE FROM cart.lines WHERE user_id = 'alice'",
        ("UPDATE inventory.holds SET expires_at = now() - interval '1 minute' WHERE id = %s", (CART_HOLD,)),
    )
    assert audit_dsn(suite_dsn) == []


# --- campaigns ------------------------------------------------------------------------------------

CAMPAIGN = str(uuid.uuid4())         # live now: A at SALE_PRICE, quota 4
SALE_PRICE = 600
QUOTA = 4
DAVE_HOLD = str(uuid.uuid4())        # dave's paid order: 1 x A from the quota, committed
ERIN_HOLD = str(uuid.uuid4())        # erin's cart line: 1 x A from the quota, active
DAVE_ORDER = str(uuid.uuid4())


def aside(sku: str, reason: str, set_aside_delta: int, reserved_delta: int, on_hand_delta: int = 0,
          hold_id: str | None = None, order_id: str | None = None) -> tuple[str, tuple]:
    """A stock change that moves set-aside units too, and its ledger entry naming the campaign."""
    return ("""
        WITH s AS (
            UPDATE inventory.stock SET on_hand = on_hand + %(dh)s, reserved = reserved + %(dr)s,
                                       set_aside = set_aside + %(ds)s
             WHERE sku = %(sku)s RETURNING sku, on_hand, reserved, set_aside
        )
        INSERT INTO inventory.ledger (sku, reason, on_hand_delta, reserved_delta, on_hand_after, reserved_after,
                                      set_aside_delta, set_aside_after, actor, hold_id, order_id, campaign_id)
        SELECT sku, %(reason)s, %(dh)s, %(dr)s, on_hand, reserved, %(ds)s, set_aside, 'test', %(hold)s, %(order)s,
               %(campaign)s FROM s
        """, dict(sku=sku, reason=reason, dh=on_hand_delta, dr=reserved_delta, ds=set_aside_delta, hold=hold_id,
                  order=order_id, campaign=CAMPAIGN))


def sale_hold(hold_id: str, owner: str, sku: str, qty: int, *, order_id: str | None = None) -> list[tuple[str, tuple]]:
    """An active hold from the campaign's quota, at its sale price, and the ledger entry that takes its units."""
    return [
        ("INSERT INTO inventory.holds (id, owner, sku, qty, state, expires_at, order_id, created_at, price,"
         " campaign_id) VALUES (%s, %s, %s, %s, 'ACTIVE', now() + interval '10 minutes', %s, now(), %s, %s)",
         (hold_id, owner, sku, qty, order_id, SALE_PRICE, CAMPAIGN)),
        aside(sku, "HOLD", -qty, qty, hold_id=hold_id, order_id=order_id),
    ]


@pytest.fixture
async def campaign_dsn(suite_dsn) -> str:
    """The consistent suite and a live campaign selling QUOTA units of A at SALE_PRICE: set aside when it was
    created; dave's paid order of 1 x A from it (delivered to the catalog), erin's cart line of 1 x A from it;
    2 remaining. The regular holds carry the regular price."""
    execute(
        suite_dsn,
        ("UPDATE inventory.holds SET price = %s WHERE sku = %s", (PRICE_A, A)),
        ("UPDATE inventory.holds SET price = %s WHERE sku = %s", (PRICE_B, B)),
        ("INSERT INTO inventory.campaigns (id, name, starts_at, ends_at, created_at, created_by)"
         " VALUES (%s, 'audit sale', now() - interval '1 hour', now() + interval '1 hour',"
         " now() - interval '2 hours', 'ops')", (CAMPAIGN,)),
        ("INSERT INTO inventory.campaign_items (campaign_id, sku, position, sale_price, quota, max_per_user, remaining)"
         " VALUES (%s, %s, 0, %s, %s, 0, %s)", (CAMPAIGN, A, SALE_PRICE, QUOTA, QUOTA - 2)),
        aside(A, "SET_ASIDE", QUOTA, 0),
        *sale_hold(DAVE_HOLD, f"order:{DAVE_ORDER}", A, 1, order_id=DAVE_ORDER),
        *commit_hold(DAVE_HOLD, A, 1, DAVE_ORDER),
        *new_order(DAVE_ORDER, "dave", "PAID", [(A, SALE_PRICE, 1, DAVE_HOLD)], payment_id="pay_dave"),
        ("UPDATE orders.items SET campaign_id = %s WHERE order_id = %s", (CAMPAIGN, DAVE_ORDER)),
        *sales_delivered(DAVE_ORDER, {A: 1}),
        *sale_hold(ERIN_HOLD, "cart:erin", A, 1),
        ("INSERT INTO cart.lines (user_id, sku, qty, hold_id, reserved_until, added_at, price)"
         " VALUES ('erin', %s, 1, %s, now() + interval '10 minutes', now(), %s)", (A, ERIN_HOLD, SALE_PRICE)),
    )
    return suite_dsn


async def test_a_consistent_suite_with_a_campaign_is_clean(campaign_dsn):
    assert audit_dsn(campaign_dsn) == []


async def test_a_campaign_ended_with_units_back_in_regular_stock_is_clean(campaign_dsn):
    # The campaign ended: what was left of its quota went back (returned), its held and sold units keep their price.
    execute(
        campaign_dsn,
        ("UPDATE inventory.campaigns SET ends_at = now() - interval '1 minute' WHERE id = %s", (CAMPAIGN,)),
        ("UPDATE inventory.campaign_items SET remaining = 0, returned = %s, closed_at = now()"
         " WHERE campaign_id = %s", (QUOTA - 2, CAMPAIGN)),
        aside(A, "CAMPAIGN_END", -(QUOTA - 2), 0),
        # Its holds were made while it ran.
        ("UPDATE inventory.holds SET created_at = now() - interval '30 minutes' WHERE campaign_id = %s",
         (CAMPAIGN,)),
    )
    assert audit_dsn(campaign_dsn) == []


OTHER_CAMPAIGN = str(uuid.uuid4())

# kind -> (the one inconsistency seeded into the suite with a campaign, tag, what the line must also name)
CAMPAIGN_SEEDS = {
    "order line at another price than its hold's": (
        [("UPDATE inventory.holds SET price = 650 WHERE id = %s", (DAVE_HOLD,))],
        "order-line-hold", DAVE_ORDER),
    "regular order line at another price than its hold's": (
        [("UPDATE orders.items SET price = 999 WHERE order_id = %s AND sku = %s", (PENDING_ORDER, A)),
         ("UPDATE orders.orders SET total = 999 WHERE id = %s", (PENDING_ORDER,))],
        "order-line-hold", PENDING_ORDER),
    "order line without the campaign of its hold": (
        [("UPDATE orders.items SET campaign_id = NULL WHERE order_id = %s", (DAVE_ORDER,))],
        "order-line-hold", DAVE_ORDER),
    "order line of a campaign its hold is not from": (
        [("UPDATE orders.items SET campaign_id = %s WHERE order_id = %s AND sku = %s", (CAMPAIGN, PENDING_ORDER, A))],
        "order-line-hold", PENDING_ORDER),
    "campaign line held before its campaign started": (
        [("UPDATE inventory.holds SET created_at = now() - interval '90 minutes' WHERE id = %s", (DAVE_HOLD,))],
        "campaign-line", DAVE_ORDER),
    "campaign line held after its campaign ended": (
        [("UPDATE inventory.campaigns SET ends_at = now() - interval '1 minute' WHERE id = %s", (CAMPAIGN,))],
        "campaign-line", DAVE_ORDER),
    "campaign line not at the sale price": (
        [("UPDATE orders.items SET price = 700 WHERE order_id = %s", (DAVE_ORDER,)),
         ("UPDATE inventory.holds SET price = 700 WHERE id = %s", (DAVE_HOLD,))],
        "campaign-line", DAVE_ORDER),
    "campaign line of a SKU the campaign does not sell": (
        [("UPDATE orders.items SET campaign_id = %s WHERE order_id = %s AND sku = %s", (CAMPAIGN, PAID_ORDER, B))],
        "campaign-line", PAID_ORDER),
    "campaign line of an unknown campaign": (
        [("UPDATE orders.items SET campaign_id = %s WHERE order_id = %s", (OTHER_CAMPAIGN, DAVE_ORDER))],
        "campaign-line", OTHER_CAMPAIGN),
    "quota that is not remaining + held + sold + returned": (
        [("UPDATE inventory.campaign_items SET quota = quota + 1 WHERE campaign_id = %s", (CAMPAIGN,))],
        "campaign-quota", CAMPAIGN),
    "campaign hold released without going back to the quota": (
        [("UPDATE inventory.holds SET state = 'RELEASED', ended_at = now() WHERE id = %s", (ERIN_HOLD,)),
         "DELETE FROM cart.lines WHERE user_id = 'erin'"],
        "campaign-quota", CAMPAIGN),
}


@pytest.mark.parametrize("kind", list(CAMPAIGN_SEEDS))
async def test_each_campaign_inconsistency_is_found_and_tagged(campaign_dsn, kind):
    statements, tag, subject = CAMPAIGN_SEEDS[kind]
    execute(campaign_dsn, *statements)
    found = audit_dsn(campaign_dsn)
    assert any(line.startswith(f"{tag} ") and subject in line for line in found), found


def _command(dsn: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if dsn is not None:
        env["DATABASE_URL"] = dsn
    return subprocess.run([sys.executable, "-m", "suite_audit"], env=env, capture_output=True, text=True,
                          timeout=60)


async def test_the_command_exits_0_when_clean_and_1_with_the_line_of_a_violation(suite_dsn):
    clean = _command(suite_dsn)
    assert (clean.returncode, clean.stdout) == (0, ""), clean.stderr
    assert "0 violation(s)" in clean.stderr and "2 orders" in clean.stderr

    execute(suite_dsn, ("UPDATE orders.orders SET total = total + 1 WHERE id = %s", (PENDING_ORDER,)))
    broken = _command(suite_dsn)
    assert broken.returncode == 1, broken.stderr
    assert broken.stdout.splitlines() == [f"order-total {PENDING_ORDER}: PENDING_PAYMENT order totals 1001,"
                                          f" but its lines add up to 1000"]
    assert "1 violation(s)" in broken.stderr


async def test_the_command_names_the_missing_variable():
    missing = _command(None)
    assert missing.returncode == 2 and "DATABASE_URL" in missing.stderr
