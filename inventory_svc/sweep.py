"""The sweep of expired holds left unreclaimed, safe to run in every replica at once."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from inventory_svc import repository as repo
from shop_runtime import metrics
from shop_runtime.clock import Clock

SWEEPER_ACTOR = "inventory-sweeper"


async def sweep_once(pool: AsyncConnectionPool, clock: Clock, limit: int = 100) -> int:
    """Reclaims expired holds of up to `limit` SKUs; a SKU whose lock is taken is left to its holder."""
    async with pool.connection() as conn:
        skus = await repo.skus_with_expired_holds(conn, await clock.db_now(conn), limit)
    reclaimed = 0
    for sku in skus:
        async with pool.connection() as conn:
            async with conn.transaction():
                # Another replica's sweeper, or a write for this SKU, is reclaiming it right now.
                if await repo.try_lock_sku(conn, sku):
                    now = await clock.db_now(conn)
                    reclaimed += (await repo.reclaim_expired(conn, [sku], now, SWEEPER_ACTOR)).rowcount
    metrics.HOLDS_EXPIRED.inc(reclaimed)
    return reclaimed
