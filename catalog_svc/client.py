"""The catalog as its callers see it: names and prices, and units sold."""

from __future__ import annotations

from dataclasses import dataclass

import cachetools

from shop.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop_runtime.clients import ServiceClient

PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"

# The service's stub, for Deps.client.
STUB = catalog_pb2_grpc.CatalogServiceStub


@dataclass(frozen=True)
class Product:
    """What a caller needs of a product: its current name and price, and whether it is on sale (an unlisted
    product's units already held still check out, but no new line of it is added)."""

    name: str
    price: int
    listed: bool = True


# The most products whose names and prices a client keeps at once.
PRICE_CACHE_ENTRIES = 10_000


class CatalogClient:
    """Calls the catalog. With `price_seconds`, names and prices are kept that long in this process, so a crowd
    adding the same product asks the catalog about once a period instead of once an add."""

    def __init__(self, service: ServiceClient, price_seconds: float = 0.0):
        self._service = service
        self._kept: cachetools.TTLCache[str, Product] | None = (
            cachetools.TTLCache(PRICE_CACHE_ENTRIES, price_seconds) if price_seconds > 0 else None)

    async def products(self, skus: list[str]) -> dict[str, Product]:
        """Names and prices by SKU, at most `price_seconds` old; unknown SKUs are absent (and asked again)."""
        found = {}
        missing = skus
        if self._kept is not None:
            # get(), not `in` then [ ]: an entry can run out of time between the two.
            found = {sku: kept for sku in skus if (kept := self._kept.get(sku)) is not None}
            missing = [sku for sku in skus if sku not in found]
        if not missing:
            return found
        # The BASIC view: names and prices without asking inventory, which the catalog would otherwise do.
        answer = await self._service.call(
            "BatchGetProducts", catalog_pb2.BatchGetProductsRequest(skus=missing, view=catalog_pb2.PRODUCT_VIEW_BASIC),
            idempotent=True)
        unlisted = set(answer.unlisted_skus)
        for p in answer.products:
            found[p.sku] = Product(p.name, p.price, p.sku not in unlisted)
            if self._kept is not None:
                self._kept[p.sku] = found[p.sku]
        return found

    async def record_sales(self, order_id: str, lines: dict[str, int]) -> bool:
        """Counts a paid order's units sold, once per order (so it may be sent again); True if counted now."""
        answer = await self._service.call("RecordSales", catalog_pb2.RecordSalesRequest(
            order_id=order_id, lines=[catalog_pb2.SaleLine(sku=s, qty=q) for s, q in lines.items()]),
            idempotent=True)
        return answer.recorded
