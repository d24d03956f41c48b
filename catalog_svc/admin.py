"""The merchant's rules for products: what a valid product is, creating one (once per idempotency key), changing
some of its fields or taking it out of sale, loading many at once all or nothing, and the history of changes.

Every change is written together with its record in catalog.product_changes (who, when, the fields before and
after), in one transaction. The public reads (catalog_svc.service) show a change once their kept answers run out:
CATALOG_CACHE_SECONDS for pages and products, CATALOG_COUNT_SECONDS for a listing's `total`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from catalog_svc import repository
from catalog_svc.model import ProductChange, ProductRow
from catalog_svc.campaigns import CampaignLookup, gather_both
from catalog_svc.service import SKU_RE, AvailabilityLookup, ProductWithAvailability
from shop_runtime import idempotency
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.reasons import refuse
from shop_runtime.validation import page_and_limit

MAX_NAME = 200
MAX_DESCRIPTION = 5000
MIN_PRICE, MAX_PRICE = 1, 2_000_000_000
MAX_BATCH = 1000
# A category's slug (catalog.categories' CHECK).
CATEGORY_RE = re.compile(r"[a-z0-9-]{1,64}\Z")
CREATE_OPERATION = "CreateProduct"


@dataclass(frozen=True)
class ProductPatch:
    """The fields a PATCH gives; None: not given, left as it is."""

    name: str | None = None
    description: str | None = None
    category: str | None = None
    price: int | None = None
    listed: bool | None = None


@dataclass(frozen=True)
class ChangesPage:
    """One page of a product's recorded changes and how many it has, with the page and size it was read with."""

    changes: list[ProductChange]
    total: int
    page: int
    limit: int


def _text(field: str, value: str, low: int, high: int) -> None:
    if not low <= len(value) <= high:
        raise invalid_argument(field, f"{field} must be {low}..{high} characters, got {len(value)}")
    # Postgres text cannot hold NUL; other control characters (tabs, newlines in a description) are kept.
    if "\x00" in value:
        raise invalid_argument(field, f"{field} must not contain NUL characters")


def check_name(name: str) -> None:
    """1..200 characters, not all blank."""
    _text("name", name, 1, MAX_NAME)
    if not name.strip():
        raise invalid_argument("name", "name must not be blank")


def check_description(description: str) -> None:
    """0..5000 characters."""
    _text("description", description, 0, MAX_DESCRIPTION)


def check_category(category: str) -> None:
    """A slug: 1..64 characters of a-z, 0-9 and '-'."""
    if not CATEGORY_RE.match(category):
        raise invalid_argument("category", "category must be a slug of 1..64 characters of a-z, 0-9 and '-'")


def check_price(price: int) -> None:
    """1..2,000,000,000 (IDR)."""
    if not MIN_PRICE <= price <= MAX_PRICE:
        raise invalid_argument("price", f"price must be within {MIN_PRICE}..{MAX_PRICE}, got {price}")


def check_product(row: ProductRow) -> None:
    """Refuses the first malformed field of a new product with INVALID_ARGUMENT and its `field`."""
    if not SKU_RE.match(row.sku):
        raise invalid_argument("sku", "sku must be 1..64 characters of A-Z, a-z, 0-9, '-', '_' and '.'")
    check_name(row.name)
    check_description(row.description)
    check_category(row.category)
    check_price(row.price)


def check_batch(rows: list[ProductRow]) -> None:
    """1..1000 products, each valid, no SKU twice; the first bad one is refused with its `index` and `field`."""
    if not 1 <= len(rows) <= MAX_BATCH:
        raise invalid_argument("products", f"a batch has 1..{MAX_BATCH} products, got {len(rows)}")
    seen: set[str] = set()
    for index, row in enumerate(rows):
        try:
            check_product(row)
            if row.sku in seen:
                raise invalid_argument("sku", f"sku {row.sku!r} is given twice in this batch")
        except ServiceError as err:
            raise ServiceError(err.code, err.reason, f"products[{index}]: {err.message}",
                               {"index": index, **err.metadata}) from None
        seen.add(row.sku)


def _answer_bytes(product: ProductWithAvailability) -> bytes:
    return json.dumps({**dataclasses.asdict(product.row), "available": product.available}).encode()


def _answer_of(stored: bytes) -> ProductWithAvailability:
    fields = json.loads(stored)
    available = fields.pop("available")
    return ProductWithAvailability(row=ProductRow(**fields), available=available)


def _no_product(sku: str) -> ServiceError:
    return refuse("PRODUCT_NOT_FOUND", f"no product {sku!r}", {"sku": sku})


class CatalogAdmin:
    """The merchant's changes of the catalog schema's products, each recorded with its actor.

    The answers of a create and a change carry the product's `available` units, asked of inventory before
    anything is written: when inventory cannot answer, the call fails with nothing written, so a client's retry
    never meets its own half-done create."""

    def __init__(self, pool: AsyncConnectionPool, availability: AvailabilityLookup,
                 campaigns: CampaignLookup | None = None):
        self._pool = pool
        self._availability = availability
        # A changed product is answered as its product page shows it, with its campaign (a new one has none).
        self._campaigns = campaigns

    async def _available(self, sku: str) -> int:
        return (await self._availability([sku])).get(sku, 0)

    async def create(self, actor: str, row: ProductRow, key: str) -> ProductWithAvailability:
        """Creates a listed product with no units sold; PRODUCT_EXISTS when the SKU exists, listed or not. With
        `key`, a repeat with the same fields answers what the first call did (IDEMPOTENCY_KEY_REUSED with others).
        """
        check_product(row)
        key = idempotency.check_key(key)
        row = dataclasses.replace(row, sales=0, listed=True)
        available = await self._available(row.sku)
        async with self._pool.connection() as conn, conn.transaction():
            if key:
                # Keys are the admin's own: two admins' keys never meet.
                stored = await idempotency.claim(
                    conn, repository.IDEMPOTENCY_TABLE, CREATE_OPERATION, f"{actor}:{key}",
                    idempotency.fingerprint(CREATE_OPERATION, row.sku, row.name, row.description, row.category,
                                            row.price))
                if stored is not None:
                    return _answer_of(stored)
            await repository.add_categories(conn, [row.category])
            if not await repository.insert_product(conn, row, actor):
                # Rolls the key's claim back with it: the key is free for another call.
                raise refuse("PRODUCT_EXISTS", f"product {row.sku!r} exists", {"sku": row.sku})
            answer = ProductWithAvailability(row=row, available=available)
            if key:
                await idempotency.record(conn, repository.IDEMPOTENCY_TABLE, CREATE_OPERATION, f"{actor}:{key}",
                                         _answer_bytes(answer))
        return answer

    async def update(self, actor: str, sku: str, patch: ProductPatch) -> ProductWithAvailability:
        """Sets the fields `patch` gives; PRODUCT_NOT_FOUND for an unknown SKU. A patch of no field is an
        INVALID_ARGUMENT (field `body`): the gateway drops body fields it does not know, so a misspelt field
        arrives as nothing at all, which an error tells the admin about. A patch of the values the product has
        writes and records nothing, and answers the product."""
        if all(v is None for v in dataclasses.asdict(patch).values()):
            raise invalid_argument("body", "give at least one of name, description, category, price and listed")
        if patch.name is not None:
            check_name(patch.name)
        if patch.description is not None:
            check_description(patch.description)
        if patch.category is not None:
            check_category(patch.category)
        if patch.price is not None:
            check_price(patch.price)
        if not SKU_RE.match(sku):  # no product can have it (catalog.products' CHECK)
            raise _no_product(sku)
        if self._campaigns is None:
            available, campaigns = await self._available(sku), ()
        else:
            found, shown = await gather_both(self._availability([sku]), self._campaigns([sku]))
            available, campaigns = found.get(sku, 0), tuple(shown.get(sku, ()))
        async with self._pool.connection() as conn, conn.transaction():
            before = await repository.lock_product(conn, sku)
            if before is None:
                raise _no_product(sku)
            after = dataclasses.replace(before, **{k: v for k, v in dataclasses.asdict(patch).items() if v is not None})
            if after != before:
                if after.category != before.category:
                    await repository.add_categories(conn, [after.category])
                await repository.update_product(conn, after, actor)
        return ProductWithAvailability(row=after, available=available, campaigns=campaigns)

    async def upsert(self, actor: str, rows: list[ProductRow]) -> tuple[int, int]:
        """Creates or updates every product of `rows`, all or nothing (see repository.upsert_products); a bad
        product refuses the whole batch with its `index` and `field`. Returns (created, updated)."""
        check_batch(rows)
        async with self._pool.connection() as conn, conn.transaction():
            await repository.add_categories(conn, [r.category for r in rows])
            created = await repository.upsert_products(conn, rows, actor)
        return created, len(rows) - created

    async def changes(self, sku: str, page: int | None, limit: int | None) -> ChangesPage:
        """One page of the product's changes, newest first; PRODUCT_NOT_FOUND for an unknown SKU."""
        page, limit = page_and_limit(page, limit)
        if not SKU_RE.match(sku):
            raise _no_product(sku)
        async with self._pool.connection() as conn:
            if not await repository.product_exists(conn, sku):
                raise _no_product(sku)
            found, total = await repository.product_changes(conn, sku, limit, (page - 1) * limit)
        return ChangesPage(changes=found, total=total, page=page, limit=limit)
