"""The cart's add path: how many calls it makes, that it holds no lock across them, and that one user's changes
of the same line at once all land. The services run in this process on real Postgres and Consul, so a test can
count the calls between them (a zero-second `faults.slow` rule counts calls without changing them)."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import psycopg

from cart_svc.repository import USER_LOCK_NAMESPACE
from devstack.procs import wait_until
from shop_runtime import faults
from tests.audit import audit_dsn
from tests.integration import test_cutoffs
from tests.integration.purchase_support import Shopper, held_for_cart, rows

_SKUS = itertools.count(1)


def fresh_sku() -> str:
    return f"HO-{next(_SKUS) + 200:04d}"


# The module's own suite (the four services in this process) and its clean-up of fault rules: the cut-off tests'
# fixtures, found here by name.
suite = test_cutoffs.suite
no_faults_left = test_cutoffs.no_faults_left


CALLS = [("catalog", m) for m in ("BatchGetProducts", "GetProduct")] + [
    ("inventory", m) for m in ("CreateHolds", "ResizeHold", "ReleaseHolds", "ChangeHolds", "ExtendHolds", "GetHolds",
                               "GetAvailability")]


def counting() -> dict[tuple[str, str], faults.Rule]:
    """Rules that count the cart's calls to the catalog and inventory, one per method, changing nothing."""
    faults.clear()
    return {(callee, method): faults.slow("cart", callee, method, 0, times=1_000_000) for callee, method in CALLS}


def made(rules: dict[tuple[str, str], faults.Rule]) -> dict[str, int]:
    return {method: rule.hits for (_, method), rule in rules.items() if rule.hits}


async def test_an_add_makes_at_most_one_catalog_call_and_one_inventory_write(suite):
    sku, other = fresh_sku(), fresh_sku()
    await suite.set_stock(sku, 50)
    await suite.set_stock(other, 50)
    shopper = Shopper(suite)

    rules = counting()
    await shopper.add(sku, 1)  # a new line in an empty cart (the flash-sale case)
    assert made(rules) == {"BatchGetProducts": 1, "CreateHolds": 1}

    rules = counting()
    await shopper.add(sku, 2)  # the line grows; the product's name and price are still kept from the add before
    assert made(rules) == {"ResizeHold": 1}

    rules = counting()
    answer = await shopper.add(other, 1)  # a second line: the first line's hold is read alongside, for the answer
    assert made(rules) == {"BatchGetProducts": 1, "CreateHolds": 1, "GetHolds": 1}
    assert {x.sku: x.qty for x in answer.items} == {sku: 3, other: 1}

    await asyncio.sleep(1.1)  # past CART_PRICE_CACHE_SECONDS: names and prices are asked again, once
    rules = counting()
    await shopper.add(sku, 1)
    assert made(rules) == {"BatchGetProducts": 1, "ResizeHold": 1, "GetHolds": 1}


async def test_an_add_holds_no_lock_while_it_waits_for_inventory(suite):
    """With the user's lock taken elsewhere (a long change of the same cart), an add still makes its hold in
    inventory: it takes the lock only for its own short write, once the lock is free."""
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    shopper = Shopper(suite)
    async with await psycopg.AsyncConnection.connect(suite.dsn) as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (USER_LOCK_NAMESPACE, shopper.user))
            adding = asyncio.create_task(shopper.add(sku, 2))
            await asyncio.to_thread(wait_until, lambda: held_for_cart(suite.dsn, shopper.user) == {sku: 2}, 10, 0.05,
                                    "the hold made while the cart is locked")
            await asyncio.sleep(0.2)
            assert not adding.done()  # its own write waits for the lock
    answer = await adding
    assert {x.sku: x.qty for x in answer.items} == {sku: 2}
    assert rows(suite.dsn, "SELECT qty FROM cart.lines WHERE user_id = %s", shopper.user) == [(2,)]


async def test_one_users_adds_of_one_line_at_once_all_land(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 100)
    shopper = Shopper(suite)
    await asyncio.gather(*(shopper.add(sku, 1, key=uuid.uuid4().hex) for _ in range(12)))
    cart = await shopper.cart()
    assert [(x.sku, x.qty) for x in cart.items] == [(sku, 12)]
    assert held_for_cart(suite.dsn, shopper.user) == {sku: 12}
    # Holds made by adds that lost the race for the line were given back at once, not left for the reconciler.
    assert rows(suite.dsn, "SELECT count(*) FROM inventory.holds WHERE owner = %s AND state = 'ACTIVE'",
                f"cart:{shopper.user}") == [(1,)]
    assert (await suite.stock(sku)).reserved == 12
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_adds_racing_a_checkout_end_in_the_order_or_in_the_cart(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 100)
    shopper = Shopper(suite)
    await shopper.add(sku, 1)
    results = await asyncio.gather(shopper.checkout(uuid.uuid4().hex),
                                   *(shopper.add(sku, 1, key=uuid.uuid4().hex) for _ in range(6)))
    order = results[0]
    in_order = sum(i.qty for i in order.items)
    in_cart = sum(x.qty for x in (await shopper.cart()).items)
    assert in_order >= 1 and in_order + in_cart == 7
    assert held_for_cart(suite.dsn, shopper.user) == ({sku: in_cart} if in_cart else {})
    await suite.reconcile()
    assert (await suite.stock(sku)).reserved == 7
    assert audit_dsn(suite.dsn) == []


async def test_a_crowd_of_adds_goes_to_inventory_in_few_calls_and_each_lands_once(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 100)
    shoppers = [Shopper(suite) for _ in range(40)]
    rules = counting()
    await asyncio.gather(*(s.add(sku, 1, key=uuid.uuid4().hex) for s in shoppers))
    calls = made(rules)
    # A couple go alone; the rest wait and go together (inventory_svc.client.SEPARATE_CALLS).
    assert calls.get("ChangeHolds", 0) >= 1 and calls.get("CreateHolds", 0) + calls["ChangeHolds"] < 40, calls
    for s in shoppers:
        assert held_for_cart(suite.dsn, s.user) == {sku: 1}
    assert (await suite.stock(sku)).reserved == 40
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def test_adds_whose_change_holds_answer_is_lost_take_effect_once_when_retried(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 100)
    shoppers = [Shopper(suite) for _ in range(20)]
    keys = {s.user: uuid.uuid4().hex for s in shoppers}
    # Every attempt of every ChangeHolds reaches inventory and commits, and its answer is lost.
    rule = faults.cut("cart", "inventory", "ChangeHolds", faults.AFTER, times=1_000)

    async def add(s):
        try:
            await s.add(sku, 1, key=keys[s.user])
            return "ok"
        except Exception as err:  # the shopper sees the lost answer and clicks again with the same key
            return type(err).__name__

    first = await asyncio.gather(*(add(s) for s in shoppers))
    assert rule.hits >= 3 and "AioRpcError" in first, (rule.hits, first)
    faults.clear()
    for s in shoppers:
        answer = await s.add(sku, 1, key=keys[s.user])
        assert [(x.sku, x.qty) for x in answer.items] == [(sku, 1)]
        assert held_for_cart(suite.dsn, s.user) == {sku: 1}
    assert (await suite.stock(sku)).reserved == 20
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []
