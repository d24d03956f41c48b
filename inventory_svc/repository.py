"""The inventory's SQL, over the `inventory` schema only."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection


@dataclass(frozen=True)
class StockRow:
    """The stock figures of one SKU."""

    sku: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        """Units a buyer can hold now."""
        return self.on_hand - self.reserved


async def get_stock(conn: AsyncConnection, skus: list[str]) -> list[StockRow]:
    """The stock rows of the SKUs that have one, in one read."""
    cur = await conn.execute(
        "SELECT sku, on_hand, reserved FROM inventory.stock WHERE sku = ANY(%s)", (skus,)
    )
    return [StockRow(*r) for r in await cur.fetchall()]
