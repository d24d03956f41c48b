"""Schemas and demo data for a local suite: every service's migrations, then the demo catalog and stock."""

from __future__ import annotations

import logging

import psycopg

from catalog_svc import demo as catalog_demo
from catalog_svc.server import SPEC as CATALOG
from cart_svc.server import SPEC as CART
from devstack import demo_data
from inventory_svc import demo as inventory_demo
from inventory_svc.server import SPEC as INVENTORY
from order_svc.server import SPEC as ORDER
from shop_runtime.db import migrate

_LOGGER = logging.getLogger(__name__)

SPECS = (CATALOG, CART, INVENTORY, ORDER)
# How many demo products a local run loads by default (`make run DEMO_PRODUCTS=100000` for more).
DEMO_PRODUCTS = 2400


async def migrate_all(dsn: str) -> None:
    """Applies every service's pending migrations."""
    for spec in SPECS:
        await migrate(dsn, spec.schema, spec.migrations)


async def load_demo(dsn: str, count: int = DEMO_PRODUCTS) -> tuple[int, int]:
    """Loads the demo catalog and its stock, once; returns (new products, new stock rows)."""
    products = demo_data.generate(count)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            new_products = await catalog_demo.load(conn, products)
            new_stock = await inventory_demo.load(conn, [(p.sku, p.on_hand) for p in products])
    _LOGGER.info("demo data: %d new products, %d new stock rows (%d in the demo set)",
                 new_products, new_stock, len(products))
    if new_products:
        # After a bulk load, as the Postgres docs advise: statistics for the planner, and a visibility map so
        # the catalog's listings count and page from its indexes alone, now rather than when autovacuum gets
        # to it (up to a minute later, in the middle of whatever runs then). VACUUM needs its own connection
        # outside a transaction.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("VACUUM (ANALYZE) catalog.products")
    return new_products, new_stock


async def prepare(dsn: str, demo: bool = True, count: int = DEMO_PRODUCTS) -> None:
    """Migrations, then (unless `demo` is false) `count` demo products and their stock."""
    await migrate_all(dsn)
    if demo:
        await load_demo(dsn, count)
