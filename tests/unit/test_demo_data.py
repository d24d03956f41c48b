"""The demo catalog: big enough, varied, deterministic, and searchable."""

from collections import Counter

from devstack.demo_data import CATEGORIES, generate


def test_demo_catalog_is_large_varied_and_deterministic():
    products = generate()
    assert len(products) >= 2000
    per_category = Counter(p.category for p in products)
    assert len(per_category) >= 8 and set(per_category) <= set(CATEGORIES)
    assert len({p.sku for p in products}) == len(products)
    assert products == generate()


def test_demo_values_fit_the_contract():
    for p in generate():
        assert 0 < p.price < 2**31 and p.price % 500 == 0
        assert p.on_hand >= 0 and p.sales >= 0
        assert p.name and p.description


def test_some_demo_products_tie_on_price_so_sku_breaks_ties():
    prices = Counter((p.category, p.price) for p in generate())
    assert any(n > 1 for n in prices.values())
