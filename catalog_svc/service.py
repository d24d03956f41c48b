"""The catalog's rules: listing and lookup, joined with live availability from inventory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc
from psycopg_pool import AsyncConnectionPool

from catalog_svc import repository
from catalog_svc.query import ListQuery
from catalog_svc.model import ProductRow
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.validation import distinct_batch

# Asks inventory for the available units of a batch of SKUs.
AvailabilityLookup = Callable[[list[str]], Awaitable[dict[str, int]]]

MAX_BATCH = 500


@dataclass(frozen=True)
class Product:
    """A product with the units a buyer can hold right now."""

    row: ProductRow
    available: int


@dataclass(frozen=True)
class ProductPage:
    """One page of a listing and the number of all matches."""

    items: list[Product]
    total: int


class Catalog:
    """Reads products from the catalog schema and asks inventory, once per call, what is available."""

    def __init__(self, pool: AsyncConnectionPool, availability: AvailabilityLookup):
        self._pool = pool
        self._availability = availability

    async def _with_availability(self, rows: list[ProductRow]) -> list[Product]:
        available = await self._availability([r.sku for r in rows]) if rows else {}
        return [Product(row=r, available=available.get(r.sku, 0)) for r in rows]

    async def list_products(self, query: ListQuery) -> ProductPage:
        """The page of products `query` asks for; an unknown category is an INVALID_ARGUMENT."""
        async with self._pool.connection() as conn:
            if query.category is not None and not await repository.category_exists(conn, query.category):
                raise invalid_argument("category", f"unknown category {query.category!r}")
            rows, total = await repository.list_products(conn, query)
        return ProductPage(items=await self._with_availability(rows), total=total)

    async def get_product(self, sku: str) -> Product:
        """One product; NOT_FOUND with reason PRODUCT_NOT_FOUND when the SKU is unknown."""
        if not sku:
            raise invalid_argument("sku", "sku is required")
        async with self._pool.connection() as conn:
            rows = await repository.get_products(conn, [sku])
        if not rows:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND", f"no product {sku!r}", {"sku": sku})
        return (await self._with_availability(rows))[0]

    async def batch_get(self, skus: list[str]) -> list[Product]:
        """The known products among `skus`, each once."""
        unique = distinct_batch(skus, "skus", MAX_BATCH)
        if not unique:
            return []
        async with self._pool.connection() as conn:
            rows = await repository.get_products(conn, unique)
        return await self._with_availability(rows)

    async def record_sales(self, order_id: str, lines: list[tuple[str, int]]) -> bool:
        """Counts a paid order's units as sold, once per order."""
        if not order_id:
            raise invalid_argument("order_id", "order_id is required")
        if any(qty < 1 for _, qty in lines):
            raise invalid_argument("lines", "every quantity sold is 1 or more")
        async with self._pool.connection() as conn, conn.transaction():
            return await repository.record_sales(conn, order_id, lines)
