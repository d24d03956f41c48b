"""Loads demo products into the catalog schema, once: rows already there are left as they are."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterable

from psycopg import AsyncConnection

if TYPE_CHECKING:
    from devstack.demo_data import DemoProduct


async def load(conn: AsyncConnection, products: Iterable["DemoProduct"]) -> int:
    """Inserts the categories and products not yet present; returns how many products were new."""
    products = list(products)
    now = datetime.now(timezone.utc)
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO catalog.categories (slug, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [(slug, slug.replace("-", " ").title()) for slug in sorted({p.category for p in products})],
        )
        before = await (await cur.execute("SELECT count(*) FROM catalog.products")).fetchone()
        await cur.executemany(
            "INSERT INTO catalog.products (sku, name, description, category, price, sales, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sku) DO NOTHING",
            [
                (p.sku, p.name, p.description, p.category, p.price, p.sales,
                 now - timedelta(seconds=p.created_offset_seconds))
                for p in products
            ],
        )
        after = await (await cur.execute("SELECT count(*) FROM catalog.products")).fetchone()
    return after[0] - before[0]
