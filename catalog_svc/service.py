"""The catalog's rules: listing and lookup, joined with availability and campaigns from inventory, briefly cached."""

from __future__ import annotations

import re

import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from psycopg_pool import AsyncConnectionPool

from catalog_svc import repository
from catalog_svc.cache import AnswerCache, Timer
from catalog_svc.campaigns import Campaign, CampaignLookup, gather_both
from catalog_svc.query import ListQuery
from catalog_svc.model import ProductRow
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.reasons import refuse
from shop_runtime.validation import distinct_batch

# Asks inventory for the available units of a batch of SKUs.
AvailabilityLookup = Callable[[list[str]], Awaitable[dict[str, int]]]

MAX_BATCH = 500
# What a SKU looks like (catalog.products' CHECK).
SKU_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


def _no_product(sku: str) -> ServiceError:
    return refuse("PRODUCT_NOT_FOUND", f"no product {sku!r}", {"sku": sku})


@dataclass(frozen=True)
class ProductWithAvailability:
    """A product as the catalog shows it: its row and the units a buyer could hold when it was read (0 when
    inventory was not asked), and the campaigns of its SKU live or starting within 24 hours when it was read,
    soonest first (the one shown is chosen when the answer is sent: campaigns.shown_campaign). Its callers' view
    of a product is catalog_svc.client.Product."""

    row: ProductRow
    available: int
    campaigns: tuple[Campaign, ...] = ()


# Compared and hashed by identity: a kept page is one object, which the servicer turns into its message once.
@dataclass(frozen=True, eq=False)
class ProductPage:
    """One page of a listing and the number of all matches."""

    items: list[ProductWithAvailability]
    total: int


class Catalog:
    """Reads products from the catalog schema and asks inventory, once per call, what is available.

    With `campaigns`, the campaigns of a page's SKUs are asked for beside availability, at once, and a page
    answers only when both have (inventory not answering either fails it the same way).

    With `cache_seconds` above 0, the answers of product pages and listings (availability, units sold and
    campaigns included) are kept that long from when their reads began, per process, and concurrent readers of one
    page share one read: a flash-sale crowd on one product costs a database query and an inventory call
    per `cache_seconds`, not per reader. The number of a filter's matches is kept for `count_seconds`
    (at least `cache_seconds`): it depends on neither stock nor sales, only on which products exist and
    their names, descriptions and categories. BatchGetProducts is never cached: checkout fixes its prices.
    """

    def __init__(self, pool: AsyncConnectionPool, availability: AvailabilityLookup, *, cache_seconds: float = 0.0,
                 count_seconds: float = 0.0, cache_entries: int = 1000, timer: Timer = time.monotonic,
                 campaigns: CampaignLookup | None = None):
        self._pool = pool
        self._availability = availability
        self._campaigns = campaigns
        self._timer, self._page_seconds = timer, cache_seconds
        # GetProduct by SKU; ListProducts by the whole validated query; match counts by filter, which the
        # listings of one filter in every order and page share: a count is most of a broad search's cost
        # (`search=a` counts all 100,000 demo products, 40 ms), and a third of the database's work for a
        # crowd browsing 32 listings when kept only as long as the pages.
        self._products: AnswerCache[str, ProductWithAvailability] = AnswerCache(cache_seconds, cache_entries, timer)
        self._pages: AnswerCache[ListQuery, ProductPage] = AnswerCache(cache_seconds, cache_entries, timer)
        self._counts: AnswerCache[tuple, int] = AnswerCache(
            max(cache_seconds, count_seconds) if cache_seconds > 0 else 0.0, cache_entries, timer)

    async def _with_availability(self, rows: list[ProductRow], *,
                                 with_campaigns: bool = True) -> list[ProductWithAvailability]:
        if not rows:
            return []
        skus = [r.sku for r in rows]
        if self._campaigns is None or not with_campaigns:
            available, campaigns = await self._availability(skus), {}
        else:
            available, campaigns = await gather_both(self._availability(skus), self._campaigns(skus))
        return [ProductWithAvailability(row=r, available=available.get(r.sku, 0), campaigns=campaigns.get(r.sku, ()))
                for r in rows]

    async def list_products(self, query: ListQuery) -> ProductPage:
        """The page of products `query` asks for; an unknown category is an INVALID_ARGUMENT."""
        return (await self._pages.get(query, lambda: self._load_page(query))).value

    async def _load_page(self, query: ListQuery) -> ProductPage:
        total = await self._counts.get((query.category, query.words), lambda: self._count(query))
        rows: list[ProductRow] = []
        # A page past the last match needs no read, when the count is no older than a page may be: an older one
        # (kept up to count_seconds) may not count products created or listed again since (catalog_svc.admin).
        if query.offset < total.value or (self._page_seconds > 0 and total.as_of < self._timer() - self._page_seconds):
            async with self._pool.connection() as conn:
                rows = await repository.list_page(conn, query, total.value)
        return ProductPage(items=await self._with_availability(rows), total=total.value)

    async def _count(self, query: ListQuery) -> int:
        async with self._pool.connection() as conn:
            if query.category is not None and not await repository.category_exists(conn, query.category):
                raise invalid_argument("category", f"unknown category {query.category!r}")
            return await repository.count_products(conn, query)

    async def get_product(self, sku: str) -> ProductWithAvailability:
        """One product; NOT_FOUND with reason PRODUCT_NOT_FOUND when the SKU is unknown."""
        if not sku:
            raise invalid_argument("sku", "sku is required")
        if not SKU_RE.match(sku):  # no product can have it (catalog.products' CHECK), and the database refuses some
            raise _no_product(sku)
        return (await self._products.get(sku, lambda: self._load_product(sku))).value

    async def _load_product(self, sku: str) -> ProductWithAvailability:
        async with self._pool.connection() as conn:
            rows = await repository.get_products(conn, [sku])
        if not rows:
            raise _no_product(sku)
        return (await self._with_availability(rows))[0]

    async def batch_get(self, skus: list[str], *, with_availability: bool) -> list[ProductWithAvailability]:
        """The known products among `skus`, each once; without availability (0), inventory is not asked."""
        # SKUs no product can have are simply not found (the database would refuse some, e.g. with a NUL).
        unique = [sku for sku in distinct_batch(skus, "skus", MAX_BATCH) if SKU_RE.match(sku)]
        if not unique:
            return []
        async with self._pool.connection() as conn:
            rows = await repository.get_products(conn, unique, unlisted=True)  # held units of them still check out
        if not with_availability:
            return [ProductWithAvailability(row=r, available=0) for r in rows]
        # Other services' reads: prices are the catalog's, campaigns are theirs to ask inventory about.
        return await self._with_availability(rows, with_campaigns=False)

    async def record_sales(self, order_id: str, lines: list[tuple[str, int]]) -> bool:
        """Counts a paid order's units as sold, once per order."""
        if not order_id:
            raise invalid_argument("order_id", "order_id is required")
        if any(qty < 1 for _, qty in lines):
            raise invalid_argument("lines", "every quantity sold is 1 or more")
        async with self._pool.connection() as conn, conn.transaction():
            return await repository.record_sales(conn, order_id, lines)
