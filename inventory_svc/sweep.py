"""The sweep of expired holds left unreclaimed and of ended campaigns' quotas not yet given back, safe to run in every
replica at once."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from inventory_svc import repository as repo
from shop_runtime import metrics
from shop_runtime.clock import Clock

SWEEPER_ACTOR = "inventory-sweeper"


async def sweep_once(pool: AsyncConnectionPool, clock: Clock, limit: int = 100) -> int:
    """Reclaims expired holds, and closes the items of ended campaigns (their quotas back to regular stock), of up
    to `limit` SKUs nobody wrote to since; a SKU whose lock is taken is left to its holder. Returns the holds
    reclaimed and items closed."""
    async with pool.connection() as conn:
        skus = await repo.skus_to_settle(conn, await clock.db_now(conn), limit)
    expired = closed = 0
    for sku in skus:
        async with pool.connection() as conn:
            async with conn.transaction():
                # Another replica's sweeper, or a write for this SKU, is settling it right now.
                if await repo.try_lock_sku(conn, sku):
                    now = await clock.db_now(conn)
                    holds, items = await repo.settle(conn, [sku], now, SWEEPER_ACTOR)
                    expired += max(holds.rowcount, 0)
                    closed += max(items.rowcount, 0)
    metrics.HOLDS_EXPIRED.inc(expired)
    return expired + closed
