"""The demo catalog at flash-sale scale: 100,000 products, every SKU and name distinct."""

import pytest

from devstack import demo_data


def test_a_hundred_thousand_products_have_distinct_skus_and_names():
    products = demo_data.generate(demo_data.MAX_COUNT)
    assert len(products) == 100_000
    assert len({p.sku for p in products}) == len(products)
    assert len({p.name for p in products}) == len(products)
    assert {p.sku for p in products} >= {"EL-0001", "EL-9999", "EL-10000"}
    assert all(10 <= len(p.name) <= 80 + len(" Series 99") for p in products)


def test_more_than_the_largest_catalog_is_refused():
    with pytest.raises(ValueError):
        demo_data.generate(demo_data.MAX_COUNT + 1)
