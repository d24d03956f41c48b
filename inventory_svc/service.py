"""The inventory's rules. Reads only so far: holds, expiry and the admin writes come with the hold API."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from inventory_svc import repository
from inventory_svc.repository import StockRow
from shop_runtime.validation import distinct_batch

MAX_BATCH = 500


class Inventory:
    """Stock figures per SKU from the inventory schema."""

    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def availability(self, skus: list[str]) -> list[StockRow]:
        """The figures of each distinct SKU asked for; a SKU without stock is all zeros."""
        unique = distinct_batch(skus, "skus", MAX_BATCH)
        if not unique:
            return []
        async with self._pool.connection() as conn:
            found = {row.sku: row for row in await repository.get_stock(conn, unique)}
        return [found.get(sku, StockRow(sku, 0, 0)) for sku in unique]
