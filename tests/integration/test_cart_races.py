"""One user's changes of the same cart at the same moment (two tabs, a resend, a checkout under way): each ends as
some order of them would, with the cart showing what inventory holds. In-process services on real Postgres and
Consul, with calls slowed on purpose so the changes overlap where they are most fragile."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import grpc

from devstack.procs import wait_until
from shop_runtime import faults
from tests.audit import audit_dsn
from tests.integration import test_cutoffs
from tests.integration.purchase_support import Shopper, held_for_cart, reason, rows

# The cut-off tests' suite and clean-up of fault rules, found here by name.
suite = test_cutoffs.suite
no_faults_left = test_cutoffs.no_faults_left

_SKUS = itertools.count(101)


def fresh_sku() -> str:
    return f"TO-{next(_SKUS):04d}"


async def test_a_removal_while_a_checkout_moves_the_cart_waits_for_it(suite):
    a, b = fresh_sku(), fresh_sku()
    await suite.set_stock(a, 10)
    await suite.set_stock(b, 10)
    shopper = Shopper(suite)
    await shopper.add(a, 1)
    await shopper.add(b, 1)
    slow = faults.slow("cart", "inventory", "ExtendHolds", 1.0)  # the checkout's move of the holds goes out late
    checkout = asyncio.create_task(shopper.checkout(uuid.uuid4().hex))
    await asyncio.to_thread(wait_until, lambda: slow.hits == 1, 10, 0.02, "the checkout inside its move")
    removed = await shopper.set(b, 0)  # another tab removes a line the checkout is moving
    order = await checkout
    assert [(i.sku, i.qty) for i in order.items] == [(a, 1), (b, 1)]  # the checkout came first: b went with it
    assert removed.items == [] and (await shopper.cart()).items == []
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_a_keyed_add_sent_again_while_it_goes_round_again_adds_once(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    key = uuid.uuid4().hex
    slow_create = faults.slow("cart", "inventory", "CreateHolds", 1.0)
    first = asyncio.create_task(shopper.add(sku, 1, key=key))  # its new line's hold goes out late
    await asyncio.to_thread(wait_until, lambda: slow_create.hits == 1, 10, 0.02, "the keyed add's hold")
    await shopper.add(sku, 1)  # another tab writes the line first
    # The keyed add finds the line taken and goes round again under the user's lock; its resize goes out late.
    slow_resize = faults.slow("cart", "inventory", "ResizeHold", 1.5)
    await asyncio.to_thread(wait_until, lambda: slow_resize.hits == 1, 10, 0.02, "the keyed add going round again")
    again = await shopper.add(sku, 1, key=key)  # the storefront sends the same request again meanwhile
    await first
    assert held_for_cart(suite.dsn, shopper.user) == {sku: 2}, "two adds of one unit, one of them sent twice"
    assert [(x.sku, x.qty) for x in again.items] == [(sku, 2)]
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_removing_an_expired_line_while_another_tab_adds_to_it(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 5)
    (hold_id,) = rows(suite.dsn, "SELECT hold_id::text FROM cart.lines WHERE user_id = %s AND sku = %s",
                      shopper.user, sku)[0]
    rows(suite.dsn, "UPDATE inventory.holds SET expires_at = clock_timestamp() - interval '1 second'"
                    " WHERE id = %s RETURNING 1", hold_id)  # the shopper comes back after the hold ran out
    slow_release = faults.slow("cart", "inventory", "ReleaseHolds", 1.0)
    removing = asyncio.create_task(shopper.set(sku, 0))  # one tab removes the line
    await asyncio.to_thread(wait_until, lambda: slow_release.hits == 1, 10, 0.02, "the removal's release")
    await shopper.add(sku, 1)  # another adds one unit to it at the same moment
    await removing
    cart = [(x.sku, x.qty) for x in (await shopper.cart()).items]
    assert cart in ([], [(sku, 1)]), f"neither order of a removal and an add of 1 gives {cart}"
    assert held_for_cart(suite.dsn, shopper.user) == dict(cart)
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_a_sku_no_product_can_have_is_not_found(suite):
    shopper = Shopper(suite)
    for call in (lambda: shopper.add("TO-0001\x00", 1), lambda: shopper.set("TO-0001\x00", 2),
                 lambda: shopper.add("TO 0001", 1)):
        try:
            await call()
        except grpc.aio.AioRpcError as err:
            assert (err.code(), reason(err)) == (grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND")
        else:
            raise AssertionError("a SKU no product can have was accepted")
