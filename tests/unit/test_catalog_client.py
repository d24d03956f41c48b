"""The catalog client's kept names and prices: a crowd adding one product asks the catalog once a period."""

import asyncio

from catalog_svc.client import CatalogClient, Product
from shop.catalog.v1 import catalog_pb2


class FakeService:
    """A ServiceClient that answers BatchGetProducts from a dict and records what it was asked."""

    def __init__(self, products: dict[str, Product]):
        self.products = products
        self.asked: list[list[str]] = []

    async def call(self, method, request, **kwargs):
        assert method == "BatchGetProducts" and request.view == catalog_pb2.PRODUCT_VIEW_BASIC
        self.asked.append(list(request.skus))
        return catalog_pb2.BatchGetProductsResponse(products=[
            catalog_pb2.Product(sku=s, name=self.products[s].name, price=self.products[s].price)
            for s in request.skus if s in self.products])


async def test_kept_products_are_not_asked_again_until_they_are_too_old():
    service = FakeService({"A": Product("Apple", 1000), "B": Product("Banana", 500)})
    client = CatalogClient(service, price_seconds=0.2)
    assert await client.products(["A"]) == {"A": Product("Apple", 1000)}
    assert await client.products(["A", "B", "NOPE"]) == {"A": Product("Apple", 1000), "B": Product("Banana", 500)}
    assert await client.products(["A", "B"]) == {"A": Product("Apple", 1000), "B": Product("Banana", 500)}
    assert service.asked == [["A"], ["B", "NOPE"]]  # only what was missing; an unknown SKU is asked again
    service.products["A"] = Product("Apple", 1200)
    await asyncio.sleep(0.25)
    assert await client.products(["A"]) == {"A": Product("Apple", 1200)}
    assert service.asked[-1] == ["A"]


async def test_without_a_period_every_call_asks():
    service = FakeService({"A": Product("Apple", 1000)})
    client = CatalogClient(service)
    for _ in range(3):
        await client.products(["A"])
    assert service.asked == [["A"]] * 3
    assert await client.products([]) == {} and len(service.asked) == 3


async def test_an_entry_running_out_between_looking_and_reading_is_asked_again():
    """A kept entry can expire at the very instant it is read: the client then asks the catalog, and never fails."""

    class Racy(dict):
        """A store whose `in` still sees an entry that reading it finds gone, as a TTL cache at its expiry."""

        def __contains__(self, key):
            return True

        def __getitem__(self, key):
            raise KeyError(key)

        def get(self, key, default=None):
            return default

    service = FakeService({"A": Product("Apple", 1000)})
    client = CatalogClient(service, price_seconds=1.0)
    client._kept = Racy()
    assert await client.products(["A"]) == {"A": Product("Apple", 1000)}
    assert service.asked == [["A"]]
