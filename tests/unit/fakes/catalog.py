"""The catalog in memory, as CatalogClient shows it."""

from __future__ import annotations

from catalog_svc.client import Product
from tests.unit.fakes.losses import Losses


class FakeCatalog(Losses):
    """Names and prices by SKU; units sold counted once per order. `asked` lists the SKUs of every products()
    call that would have reached the catalog (the real client makes no call for none)."""

    def __init__(self, products: dict[str, Product]):
        super().__init__("catalog")
        self.by_sku = dict(products)
        self.sold: dict[str, int] = {}
        self.orders_counted: list[str] = []
        self.asked: list[list[str]] = []

    async def products(self, skus: list[str]) -> dict[str, Product]:
        if not skus:  # as the client: no call at all
            return {}

        self.asked.append(list(skus))

        async def read() -> dict[str, Product]:
            return {sku: self.by_sku[sku] for sku in skus if sku in self.by_sku}

        return await self._lossy("products", read)

    async def record_sales(self, order_id: str, lines: dict[str, int]) -> bool:
        async def work() -> bool:
            if order_id in self.orders_counted:
                return False
            self.orders_counted.append(order_id)
            for sku, qty in lines.items():
                self.sold[sku] = self.sold.get(sku, 0) + qty
            return True

        return await self._lossy("record_sales", work)
