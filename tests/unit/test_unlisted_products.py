"""An unlisted product in the cart (cart_svc.service.Carts on fakes): no new line of it, while a line the cart already
has can still change and checks out; and the catalog client's record says whether a product is listed."""

from __future__ import annotations

import dataclasses

import pytest

from catalog_svc.client import CatalogClient
from shop.catalog.v1 import catalog_pb2
from tests.unit.fakes.checks import refused
from tests.unit.test_cart_rules import USER, World


@pytest.fixture
def world(monkeypatch) -> World:
    return World(monkeypatch, {"A": 10, "B": 5, "Z": 0})


def unlist(world: World, sku: str) -> None:
    world.catalog.by_sku[sku] = dataclasses.replace(world.catalog.by_sku[sku], listed=False)


async def test_a_new_line_of_an_unlisted_product_is_refused_and_holds_nothing(world):
    unlist(world, "A")
    await refused("PRODUCT_NOT_FOUND", world.carts.add(USER, "A", 1, "k1"))
    await refused("PRODUCT_NOT_FOUND", world.carts.set_quantity(USER, "A", 2, "k2"))
    assert world.inventory.available("A") == 10 and world.line("A") is None


async def test_a_line_held_before_the_product_was_unlisted_changes_and_checks_out(world):
    await world.carts.add(USER, "A", 2, "k1")
    unlist(world, "A")
    await world.carts.add(USER, "A", 1, "k2")
    assert world.line("A").qty == 3 and world.inventory.available("A") == 7
    answer = await world.carts.checkout(USER, "order-1", 900)
    assert [(x.sku, x.qty, x.price) for x in answer.lines] == [("A", 3, 1_000)]


class _Service:
    def __init__(self, answer):
        self.answer = answer

    async def call(self, method, request, idempotent=False):
        return self.answer


async def test_the_client_marks_unlisted_products():
    answer = catalog_pb2.BatchGetProductsResponse(
        products=[catalog_pb2.Product(sku="A", name="Apple", price=1), catalog_pb2.Product(sku="B", name="Bean", price=2)],
        unlisted_skus=["B"])
    found = await CatalogClient(_Service(answer)).products(["A", "B"])  # type: ignore[arg-type]
    assert {sku: p.listed for sku, p in found.items()} == {"A": True, "B": False}
