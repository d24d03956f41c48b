"""Loads demo products into the catalog schema, once: rows already there are left as they are."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable, Protocol

from psycopg import AsyncConnection


class DemoProduct(Protocol):
    """What a demo product gives the loader (devstack.demo_data makes them); read-only, so frozen records fit."""

    @property
    def sku(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def price(self) -> int: ...
    @property
    def sales(self) -> int: ...
    @property
    def created_offset_seconds(self) -> int: ...


async def load(conn: AsyncConnection, products: Iterable[DemoProduct]) -> int:
    """Inserts the categories and products not yet present; returns how many products were new."""
    products = list(products)
    now = datetime.now(timezone.utc)
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO catalog.categories (slug, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [(slug, slug.replace("-", " ").title()) for slug in sorted({p.category for p in products})],
        )
        before = await (await cur.execute("SELECT count(*) FROM catalog.products")).fetchone()
        # count(*) without GROUP BY always returns exactly one row, even on an empty table.
        assert before is not None
        await cur.executemany(
            # A demo product's units sold come from no order of this suite: all of them are imported.
            "INSERT INTO catalog.products (sku, name, description, category, price, sales, sales_imported, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sku) DO NOTHING",
            [
                (p.sku, p.name, p.description, p.category, p.price, p.sales, p.sales,
                 now - timedelta(seconds=p.created_offset_seconds))
                for p in products
            ],
        )
        after = await (await cur.execute("SELECT count(*) FROM catalog.products")).fetchone()
        assert after is not None  # count(*) without GROUP BY: always one row, as above
    return after[0] - before[0]
