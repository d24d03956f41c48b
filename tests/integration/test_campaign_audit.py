"""The inventory audit proves campaigns too: clean after real campaign traffic, and naming each kind of inconsistency
seeded into it (each seeded in a transaction of its own, audited inside it, then rolled back)."""

from __future__ import annotations

import psycopg
import pytest

from inventory_svc.audit import run_checks
from shop.inventory.v1 import inventory_pb2
from tests.clock import ManualClock
from tests.integration.inventory_support import audit_of
from tests.integration.test_campaign_inventory import PRICE, SALE, running


@pytest.fixture
async def traded(fresh_dsn):
    """A database after campaign traffic: a campaign on A (quota 10) with units held, sold, released and expired
    back to the quota (A: on hand 48, reserved 3, set aside 6; its item: 6 remaining, 2 held, 2 sold); one on B
    that ended and was closed; regular holds beside them."""
    async with running(fresh_dsn, ManualClock()) as inv:
        for sku in ("A", "B"):
            await inv.stock(sku, 50)
        await inv.campaign([("A", SALE, 10, 0)], lasts=600)
        await inv.campaign([("B", SALE, 5, 0)], lasts=60)
        sold = await inv.add("u1", "A", 2)
        await inv.stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[sold.hold_id]))
        released = await inv.add("u2", "A", 1)
        await inv.stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[released.hold_id]))
        await inv.add("u3", "A", 2, ttl=10)
        await inv.add("u4", "A", 1)
        await inv.add("u5", "A", 1, expected=PRICE)
        await inv.add("u6", "B", 2)
        inv.clock.advance(61)
        await inv.add("u7", "A", 1)
        await inv.add("u8", "B", 1)
    return fresh_dsn


async def violations_with(dsn: str, *statements: str) -> list[str]:
    """The audit's lines with the statements applied, in a transaction rolled back afterwards."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        try:
            for statement in statements:
                await conn.execute(statement)
            return await run_checks(conn)
        finally:
            await conn.rollback()


_A_QUOTA_HOLD = "(SELECT id FROM inventory.holds WHERE sku = 'A' AND campaign_id IS NOT NULL AND state = 'ACTIVE'" \
                " ORDER BY id LIMIT 1)"


@pytest.mark.parametrize(("seeded", "named"), [
    # A set-aside figure the ledger does not replay to (nor the open items' remaining).
    (["UPDATE inventory.stock SET set_aside = set_aside + 1 WHERE sku = 'A'"],
     ["A: stock row on_hand=48 reserved=3 set_aside=7, ledger replays to on_hand=48 reserved=3 set_aside=6",
      "A: set_aside=7 but the open campaign items have 6 remaining"]),
    # A ledger entry whose set_aside_after does not follow from the entries before it.
    (["UPDATE inventory.ledger SET set_aside_after = set_aside_after + 5"
      " WHERE id = (SELECT min(id) FROM inventory.ledger WHERE sku = 'A' AND reason = 'SET_ASIDE')"],
     ["A: ledger entry", "set_aside=15, the entries before it give"]),
    # Units of a quota that are nowhere: returned grew without a hold coming back.
    (["UPDATE inventory.campaign_items SET returned = returned + 1 WHERE sku = 'A'"],
     [" A: quota 10 but remaining 6 + held 2 + sold 2 + returned 1 differ"]),
    # A quota hold at a price other than its sale price.
    ([f"UPDATE inventory.holds SET price = {PRICE} WHERE id = {_A_QUOTA_HOLD}"],
     [f"price {PRICE} (sale price {SALE})"]),
    # A quota hold made before its campaign started.
    ([f"UPDATE inventory.holds SET created_at = created_at - interval '1 hour' WHERE id = {_A_QUOTA_HOLD}"],
     ["outside or off ["]),
    # A closed item that still has units remaining (past the constraint that normally stops it).
    (["ALTER TABLE inventory.campaign_items DROP CONSTRAINT campaign_items_closed_empty",
      "UPDATE inventory.campaign_items SET remaining = 1, returned = returned - 1 WHERE sku = 'B'"],
     ["B: closed with 1 remaining"]),
    # More held and set aside than on hand (past the constraint that normally stops it).
    (["ALTER TABLE inventory.stock DROP CONSTRAINT stock_committed_within_on_hand",
      "UPDATE inventory.stock SET on_hand = 5 WHERE sku = 'A'"],
     ["A: on_hand=5 reserved=3 set_aside=6 breaks"]),
])
async def test_the_audit_names_each_seeded_campaign_inconsistency(traded, seeded, named):
    assert await audit_of(traded) == []
    lines = await violations_with(traded, *seeded)
    for phrase in named:
        assert any(phrase in line for line in lines), (phrase, lines)
