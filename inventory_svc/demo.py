"""Loads demo stock into the inventory schema, once, each new row with its INITIAL ledger entry."""

from __future__ import annotations

from typing import Iterable

from psycopg import AsyncConnection


async def load(conn: AsyncConnection, stock: Iterable[tuple[str, int]], actor: str = "demo-data") -> int:
    """Creates a stock row for each (sku, on_hand) that has none; returns how many were new."""
    rows = list(stock)
    async with conn.cursor() as cur:
        await cur.execute(
            "CREATE TEMP TABLE demo_stock (sku text PRIMARY KEY, on_hand integer NOT NULL) ON COMMIT DROP"
        )
        async with cur.copy("COPY demo_stock (sku, on_hand) FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)
        # Only rows this call creates get a ledger entry, so a second load writes nothing.
        await cur.execute(
            """
            WITH created AS (
                INSERT INTO inventory.stock (sku, on_hand, reserved)
                SELECT sku, on_hand, 0 FROM demo_stock ORDER BY sku
                ON CONFLICT (sku) DO NOTHING
                RETURNING sku, on_hand
            )
            INSERT INTO inventory.ledger
                (sku, reason, on_hand_delta, reserved_delta, on_hand_after, reserved_after, actor)
            SELECT sku, 'INITIAL', on_hand, 0, on_hand, 0, %s FROM created
            """,
            (actor,),
        )
        return cur.rowcount
