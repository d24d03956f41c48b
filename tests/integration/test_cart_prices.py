"""Prices held with the units, through the real cart, inventory and order on real Postgres and Consul: a cart line and
its order line keep the price and campaign of their hold, whatever the catalog or a campaign does afterwards; an
expected price inventory cannot hold at, and a sale that ended under an expired line, change nothing; and the suite
audit, which checks held prices against order lines and campaign quotas, stays clean."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from cart_svc.service import MAX_EXPECTED_PRICE
from shop.cart.v1 import cart_pb2
from shop.inventory.v1 import inventory_pb2
from tests.audit import audit_dsn
from tests.integration import test_cutoffs
from tests.integration.purchase_support import Shopper, held_for_cart, reason, rows

_SKUS = itertools.count(1)


def fresh_sku() -> str:
    """A demo SKU no other test of this module uses."""
    return f"GR-{next(_SKUS) + 100:04d}"


# The module's own suite (the four services in this process), found here by name, as test_cart_add_path does.
suite = test_cutoffs.suite
no_faults_left = test_cutoffs.no_faults_left

ADMIN = [("x-shop-user-id", "test-admin")]


def catalog_price(dsn: str, sku: str) -> int:
    return rows(dsn, "SELECT price FROM catalog.products WHERE sku = %s", sku)[0][0]


def set_catalog_price(dsn: str, sku: str, price: int) -> None:
    """An admin's price change, straight in the catalog's table (the catalog's own route is another change's)."""
    rows(dsn, "UPDATE catalog.products SET price = %s WHERE sku = %s RETURNING sku", price, sku)


async def add(shopper: Shopper, sku: str, qty: int, expected: int = 0, key: str | None = None) -> cart_pb2.Cart:
    md = [("x-shop-user-id", shopper.user)] + ([("idempotency-key", key)] if key else [])
    return await shopper.suite.cart.AddItem(cart_pb2.AddItemRequest(sku=sku, qty=qty, expected_price=expected),
                                            metadata=md, timeout=30)


async def set_qty(shopper: Shopper, sku: str, qty: int, expected: int = 0) -> cart_pb2.Cart:
    return await shopper.suite.cart.SetItemQuantity(
        cart_pb2.SetItemQuantityRequest(sku=sku, qty=qty, expected_price=expected),
        metadata=[("x-shop-user-id", shopper.user)], timeout=30)


async def refusal(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def lines(cart) -> list[tuple[str, int, int, int, str]]:
    """(sku, price, qty, subtotal, campaign) of each line."""
    return [(x.sku, x.price, x.qty, x.subtotal, x.campaign_id) for x in cart.items]


async def until_the_catalog_answers(shopper: Shopper, sku: str, price: int) -> None:
    """Waits past the catalog's and the cart's caches: a new line of `sku` for a stranger is held at `price`."""
    for _ in range(50):
        stranger = Shopper(shopper.suite)
        cart = await add(stranger, sku, 1)
        await set_qty(stranger, sku, 0)
        if cart.items[0].price == price:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the catalog never answered {sku} at {price}")


async def test_expected_price_out_of_range_is_a_400_naming_it(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    shopper = Shopper(suite)
    for expected in (-1, MAX_EXPECTED_PRICE + 1):
        err = await refusal(add(shopper, sku, 1, expected))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(err) == "INVALID_ARGUMENT"
    assert held_for_cart(suite.dsn, shopper.user) == {}
    assert rows(suite.dsn, "SELECT count(*) FROM cart.lines WHERE user_id = %s", shopper.user) == [(0,)]


async def test_the_same_key_with_another_expected_price_is_refused(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    shopper = Shopper(suite)
    price = catalog_price(suite.dsn, sku)
    first = await add(shopper, sku, 2, price, key="k1")
    err = await refusal(add(shopper, sku, 2, key="k1"))
    assert reason(err) == "IDEMPOTENCY_KEY_REUSED"
    again = await add(shopper, sku, 2, price, key="k1")
    assert lines(again) == lines(first)
    assert held_for_cart(suite.dsn, shopper.user) == {sku: 2}


async def test_a_line_and_its_order_keep_the_price_their_units_were_held_at(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    shopper = Shopper(suite)
    price = catalog_price(suite.dsn, sku)

    cart = await add(shopper, sku, 2, price)

    assert lines(cart) == [(sku, price, 2, 2 * price, "")]
    assert rows(suite.dsn, "SELECT price, campaign_id FROM inventory.holds WHERE owner = %s",
                f"cart:{shopper.user}") == [(price, None)]
    assert rows(suite.dsn, "SELECT price FROM cart.lines WHERE user_id = %s", shopper.user) == [(price,)]

    set_catalog_price(suite.dsn, sku, price + 1_000)  # an admin raises the price
    await until_the_catalog_answers(shopper, sku, price + 1_000)
    assert lines(await shopper.cart()) == [(sku, price, 2, 2 * price, "")]
    # One line, one price: more units are not sold at the old price; the line's own units keep it.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await add(shopper, sku, 1)
    assert reason(refused.value) == "PRICE_CHANGED"
    assert lines(await shopper.cart()) == [(sku, price, 2, 2 * price, "")]

    order = await shopper.checkout()
    assert [(i.sku, i.price, i.qty, i.campaign_id) for i in order.items] == [(sku, price, 2, "")]
    assert order.total == 2 * price
    paid = await shopper.pay(order, "p1")
    assert paid.total == 2 * price
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_an_expected_price_inventory_cannot_hold_at_is_price_changed_and_changes_nothing(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    shopper = Shopper(suite)
    price = catalog_price(suite.dsn, sku)

    err = await refusal(add(shopper, sku, 1, price - 1))
    assert (err.code(), reason(err)) == (grpc.StatusCode.ABORTED, "PRICE_CHANGED")
    assert held_for_cart(suite.dsn, shopper.user) == {}

    await add(shopper, sku, 2, price)
    err = await refusal(set_qty(shopper, sku, 4, price + 1))  # growing at another price than the line's
    assert reason(err) == "PRICE_CHANGED"
    assert held_for_cart(suite.dsn, shopper.user) == {sku: 2}
    assert [(x.qty, x.price) for x in (await shopper.cart()).items] == [(2, price)]
    assert (await suite.stock(sku)).reserved == 2
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def create_campaign(suite, sku: str, sale_price: int, quota: int, seconds: int = 3600,
                          max_per_user: int = 0) -> str:
    """A campaign of `sku` live from now, through inventory's own call."""
    now = datetime.now(timezone.utc)
    request = inventory_pb2.CreateCampaignRequest(name=f"sale of {sku}", items=[inventory_pb2.NewCampaignItem(
        sku=sku, sale_price=sale_price, quota=quota, max_per_user=max_per_user)], idempotency_key=uuid.uuid4().hex)
    request.starts_at.FromDatetime(now - timedelta(seconds=5))
    request.ends_at.FromDatetime(now + timedelta(seconds=seconds))
    campaign = await suite.inventory.CreateCampaign(request, metadata=ADMIN, timeout=30)
    return campaign.campaign_id


async def test_a_sale_line_and_its_order_keep_the_sale_price_and_campaign_after_the_sale(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    price = catalog_price(suite.dsn, sku)
    campaign = await create_campaign(suite, sku, price // 2, quota=3)
    shopper = Shopper(suite)

    cart = await add(shopper, sku, 2)
    assert lines(cart) == [(sku, price // 2, 2, 2 * (price // 2), campaign)]
    err = await refusal(add(Shopper(suite), sku, 2))  # the quota has 1 left
    assert reason(err) == "SALE_SOLD_OUT"
    regular = await add(Shopper(suite), sku, 2, price)  # the regular price, asked for
    assert lines(regular) == [(sku, price, 2, 2 * price, "")]

    await suite.inventory.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=campaign),
                                         metadata=ADMIN, timeout=30)  # the sale ends now
    assert lines(await shopper.cart()) == [(sku, price // 2, 2, 2 * (price // 2), campaign)]
    order = await shopper.checkout()
    assert [(i.sku, i.price, i.qty, i.campaign_id) for i in order.items] == [(sku, price // 2, 2, campaign)]
    assert order.total == 2 * (price // 2)
    assert rows(suite.dsn, "SELECT campaign_id::text FROM orders.items WHERE order_id = %s",
                order.order_id) == [(campaign,)]
    await shopper.pay(order, "p1")
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_checkout_of_an_expired_sale_line_after_the_sale_is_sale_ended_and_changes_nothing(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    price = catalog_price(suite.dsn, sku)
    campaign = await create_campaign(suite, sku, price // 2, quota=3)
    shopper = Shopper(suite)
    await add(shopper, sku, 2)
    await suite.inventory.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=campaign),
                                         metadata=ADMIN, timeout=30)
    # The line's hold runs out (as reservation_ttl_seconds passing would make it).
    rows(suite.dsn, "UPDATE inventory.holds SET expires_at = clock_timestamp() WHERE owner = %s RETURNING id",
         f"cart:{shopper.user}")
    before = lines(await shopper.cart())

    err = await refusal(shopper.checkout())

    assert (err.code(), reason(err)) == (grpc.StatusCode.ABORTED, "SALE_ENDED")
    assert lines(await shopper.cart()) == before
    assert await shopper.orders() == []
    assert rows(suite.dsn, "SELECT count(*) FROM orders.checkouts WHERE user_id = %s", shopper.user) == [(0,)]
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_checkout_holds_expired_lines_again_at_their_prices(suite):
    sku, sale_sku = fresh_sku(), fresh_sku()
    await suite.set_stock(sku, 10)
    await suite.set_stock(sale_sku, 10)
    price, sale_regular = catalog_price(suite.dsn, sku), catalog_price(suite.dsn, sale_sku)
    campaign = await create_campaign(suite, sale_sku, sale_regular // 2, quota=3)
    shopper = Shopper(suite)
    await add(shopper, sku, 2)
    await add(shopper, sale_sku, 1)
    set_catalog_price(suite.dsn, sku, price + 500)
    await until_the_catalog_answers(shopper, sku, price + 500)
    rows(suite.dsn, "UPDATE inventory.holds SET expires_at = clock_timestamp() WHERE owner = %s RETURNING id",
         f"cart:{shopper.user}")
    assert [x.expired for x in (await shopper.cart()).items] == [True, True]

    order = await shopper.checkout()

    assert [(i.sku, i.price, i.qty, i.campaign_id) for i in order.items] == [
        (sku, price, 2, ""), (sale_sku, sale_regular // 2, 1, campaign)]
    assert order.total == 2 * price + sale_regular // 2
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_a_campaigns_per_user_limit_refuses_the_add_and_changes_nothing(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    price = catalog_price(suite.dsn, sku)
    campaign = await create_campaign(suite, sku, price // 2, quota=5, max_per_user=2)
    shopper = Shopper(suite)
    await add(shopper, sku, 2)

    err = await refusal(add(shopper, sku, 1))

    assert (err.code(), reason(err)) == (grpc.StatusCode.ABORTED, "PURCHASE_LIMIT")
    assert lines(await shopper.cart()) == [(sku, price // 2, 2, 2 * (price // 2), campaign)]
    assert held_for_cart(suite.dsn, shopper.user) == {sku: 2}
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_checkout_of_an_expired_sale_line_whose_quota_is_gone_is_sale_sold_out_and_changes_nothing(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    price = catalog_price(suite.dsn, sku)
    await create_campaign(suite, sku, price // 2, quota=3)
    shopper = Shopper(suite)
    await add(shopper, sku, 2)
    rows(suite.dsn, "UPDATE inventory.holds SET expires_at = clock_timestamp() WHERE owner = %s RETURNING id",
         f"cart:{shopper.user}")
    await add(Shopper(suite), sku, 3)  # the expired line's units went back to the quota; another buyer took them
    before = lines(await shopper.cart())

    err = await refusal(shopper.checkout())

    assert (err.code(), reason(err)) == (grpc.StatusCode.ABORTED, "SALE_SOLD_OUT")
    assert lines(await shopper.cart()) == before
    assert await shopper.orders() == []
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []
