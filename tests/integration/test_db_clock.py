"""Expiry is decided by the database's clock, read after the SKU's lock: a replica's own clock decides nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from inventory_svc.campaigns import NewItem
from inventory_svc.service import Inventory, Line
from shop_runtime.clock import SystemClock
from shop_runtime.db import migrate, open_pool
from inventory_svc.server import SPEC


class SkewedClock(SystemClock):
    """A replica whose machine clock is an hour ahead of everyone else's; its database clock is the database's."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(hours=1)


class NoMachineClock(SystemClock):
    """A replica that must not read its machine's clock at all."""

    def now(self) -> datetime:
        raise AssertionError("a decision of expiry read the machine's clock")


@pytest.fixture
async def pool(fresh_dsn):
    await migrate(fresh_dsn, SPEC.schema, SPEC.migrations)
    p = await open_pool(fresh_dsn, max_size=4)
    try:
        yield p
    finally:
        await p.close()


async def test_no_write_or_read_of_the_inventory_reads_the_machines_clock(pool):
    inventory = Inventory(pool, NoMachineClock())
    await inventory.set_stock("CLK-1", 10, actor="test")
    (a, b) = [*(await inventory.create_holds("cart:u", [Line("CLK-1", 2)], 600, actor="test")),
              *(await inventory.create_holds("cart:v", [Line("CLK-1", 1)], 1, actor="test"))]
    await inventory.resize_hold(a.id, 0, 600, add=1, actor="test", owner="cart:u")
    (moved,) = await inventory.extend_holds([a.id], "order:o", "o", 600, actor="test")
    await inventory.commit_holds([moved.id], actor="test")
    await inventory.get_holds([a.id, b.id])
    await inventory.availability(["CLK-1"])
    await inventory.active_holds("cart:", 0, "", 10)
    await inventory.sweep_once()
    assert (await inventory.get_stock("CLK-1")).on_hand == 7
    # Campaigns too: their window, status and end are the database's clock's.
    async with pool.connection() as conn:
        now = (await (await conn.execute("SELECT clock_timestamp()")).fetchone())[0]
    campaign = await inventory.campaigns.create("clock", now, now + timedelta(hours=1),
                                                [NewItem("CLK-1", 1, 2, 1)], actor="test")
    (sale,) = await inventory.create_holds("cart:w", [Line("CLK-1", 1)], 600, actor="test", buyer="w")
    assert (campaign.status, sale.price, sale.campaign_id) == ("LIVE", 1, campaign.id)
    await inventory.campaigns.get([campaign.id])
    await inventory.campaigns.list(status=None, skus=["CLK-1"], starting_within=86400, page=0, limit=0)
    assert (await inventory.campaigns.cancel(campaign.id, actor="test")).status == "ENDED"
    await inventory.sweep_once()


async def test_a_replica_whose_clock_runs_ahead_expires_nothing_early(pool):
    honest, ahead = Inventory(pool, SystemClock()), Inventory(pool, SkewedClock())
    await honest.set_stock("CLK-2", 5, actor="test")
    (hold,) = await honest.create_holds("cart:u", [Line("CLK-2", 5)], 600, actor="test")
    # By its own clock the hold ran out 50 minutes ago; by the database's it has 10 minutes left.
    assert await ahead.sweep_once() == 0
    (seen,) = await ahead.get_holds([hold.id])
    assert seen.state == "ACTIVE"
    assert (await ahead.availability(["CLK-2"]))[0].available == 0
    (resized,) = [await ahead.resize_hold(hold.id, 4, actor="test", owner="cart:u")]
    assert resized.state == "ACTIVE" and resized.expires_at == hold.expires_at
