"""The catalog as its callers see it: names and prices, and units sold."""

from __future__ import annotations

from dataclasses import dataclass

from shop.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop_runtime.clients import ServiceClient

PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"

# The service's stub, for Deps.client.
STUB = catalog_pb2_grpc.CatalogServiceStub


@dataclass(frozen=True)
class Product:
    """What a caller needs of a product: its current name and price."""

    name: str
    price: int


class CatalogClient:
    """Calls the catalog."""

    def __init__(self, service: ServiceClient):
        self._service = service

    async def products(self, skus: list[str]) -> dict[str, Product]:
        """Current names and prices by SKU; unknown SKUs are absent."""
        if not skus:
            return {}
        # The BASIC view: names and prices without asking inventory, which the catalog would otherwise do.
        answer = await self._service.call(
            "BatchGetProducts", catalog_pb2.BatchGetProductsRequest(skus=skus, view=catalog_pb2.PRODUCT_VIEW_BASIC),
            idempotent=True)
        return {p.sku: Product(p.name, p.price) for p in answer.products}

    async def record_sales(self, order_id: str, lines: dict[str, int]) -> bool:
        """Counts a paid order's units sold, once per order (so it may be sent again); True if counted now."""
        answer = await self._service.call("RecordSales", catalog_pb2.RecordSalesRequest(
            order_id=order_id, lines=[catalog_pb2.SaleLine(sku=s, qty=q) for s, q in lines.items()]),
            idempotent=True)
        return answer.recorded
