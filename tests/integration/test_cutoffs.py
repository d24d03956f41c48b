"""Every step of a purchase that crosses services, cut off on purpose before and after the callee commits.

Each case cuts one call between services (all of its caller's retries, so the shopper sees the
failure), then the shopper clicks again with the same Idempotency-Key, or with a new one. Each ends
with what the shopper sees matching what inventory holds, at most one charge standing per order, and
the suite-wide audit clean after a reconciler pass. The services run in this process (real gRPC,
real Postgres, real Consul) so the cut-offs can be placed exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid

import grpc
import psycopg
import pytest

from devstack.postgres import create_database, dsn_for
from devstack.prepare import prepare
from devstack.procs import start_consul
from inventory_svc.repository import sku_lock_key
from shop.inventory.v1 import inventory_pb2
from shop.order.v1 import order_pb2
from shop_runtime import deadlines, faults
from shop_runtime.errors import ServiceError
from shop_runtime.metrics import REPAIRS
from tests.audit import audit_dsn
from tests.integration.purchase_support import (Shopper, charges_standing, held_for_cart, reason, rows,
                                                running_suite)

BEFORE, AFTER = faults.BEFORE, faults.AFTER
# Demo SKUs no other test of this module uses, one per test.
_SKUS = itertools.count(1)


def fresh_sku() -> str:
    return f"BO-{next(_SKUS) + 100:04d}"


@pytest.fixture(scope="module")
async def suite(pg_admin_dsn, log_dir):
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    await prepare(dsn)
    ports, consul = start_consul(log_dir)
    try:
        async with running_suite(dsn, ports.consul_addr) as running:
            yield running
    finally:
        consul.stop()


@pytest.fixture(autouse=True)
def no_faults_left():
    yield
    faults.clear()


async def settled(suite, sku: str | None = None) -> None:
    """A reconciler pass, then the suite-wide audit must be clean."""
    await suite.reconcile()
    assert audit_dsn(suite.dsn) == []


async def cart_shows_what_is_held(shopper: Shopper) -> dict[str, int]:
    cart = await shopper.cart()
    shown = {line.sku: line.qty for line in cart.items if not line.expired}
    assert shown == held_for_cart(shopper.suite.dsn, shopper.user), "the cart must show exactly what is held"
    return shown


def cut_all(caller: str, callee: str, method: str, when: str) -> faults.Rule:
    """Cuts every attempt the caller makes, so the failure reaches the shopper."""
    return faults.cut(caller, callee, method, when, times=deadlines.ATTEMPTS)


# --- cart -> inventory ---------------------------------------------------------------------------

# (operation, inventory method, line before, the change) -> units on the line after the retry, by
# (when cut, which key the shopper retried with).
CART_CASES = {
    "add to a line": ("ResizeHold", 1, ("add", 2), {(BEFORE, "same"): 3, (BEFORE, "new"): 3,
                                                     (AFTER, "same"): 3, (AFTER, "new"): 5}),
    "add a new line": ("CreateHolds", 0, ("add", 2), {(BEFORE, "same"): 2, (BEFORE, "new"): 2,
                                                       (AFTER, "same"): 2, (AFTER, "new"): 2}),
    "set a line": ("ResizeHold", 1, ("set", 4), {(BEFORE, "same"): 4, (BEFORE, "new"): 4,
                                                  (AFTER, "same"): 4, (AFTER, "new"): 4}),
    "remove a line": ("ReleaseHolds", 1, ("set", 0), {(BEFORE, "same"): 0, (BEFORE, "new"): 0,
                                                       (AFTER, "same"): 0, (AFTER, "new"): 0}),
}


@pytest.mark.parametrize("retry", ["same", "new"])
@pytest.mark.parametrize("when", [BEFORE, AFTER])
@pytest.mark.parametrize("case", list(CART_CASES))
async def test_a_cart_change_cut_off_between_cart_and_inventory(suite, case, when, retry):
    method, before, (op, qty), expected = CART_CASES[case]
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    if before:
        await shopper.add(sku, before, key=uuid.uuid4().hex)
    change = shopper.add if op == "add" else shopper.set
    rule = cut_all("cart", "inventory", method, when)
    key = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await change(sku, qty, key=key)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE and rule.hits == deadlines.ATTEMPTS
    faults.clear()
    answer = await change(sku, qty, key=key if retry == "same" else uuid.uuid4().hex)
    units = expected[(when, retry)]
    assert {line.sku: line.qty for line in answer.items} == ({sku: units} if units else {})
    repairs = REPAIRS.labels("cart", "orphan_cart_hold")._value.get()
    await settled(suite)
    if (case, when, retry) == ("add a new line", AFTER, "new"):
        # The first add's hold reached no line: the reconciler gave it back.
        assert REPAIRS.labels("cart", "orphan_cart_hold")._value.get() == repairs + 1
    assert await cart_shows_what_is_held(shopper) == ({sku: units} if units else {})
    stock = await suite.stock(sku)
    assert (stock.on_hand, stock.reserved) == (20, units)


async def test_a_keyed_add_replays_its_first_answer_and_refuses_another_request(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    key = uuid.uuid4().hex
    first = await shopper.add(sku, 2, key=key)
    again = await shopper.add(sku, 2, key=key)
    assert again == first and (await suite.stock(sku)).reserved == 2
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await shopper.add(sku, 3, key=key)
    assert reused.value.code() == grpc.StatusCode.ABORTED and reason(reused.value) == "IDEMPOTENCY_KEY_REUSED"
    await settled(suite)


async def test_an_abandoned_add_finishes_its_step(suite):
    """The shopper's request is cut off while the cart waits for inventory: the cart finishes the change."""
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    faults.slow("cart", "inventory", "CreateHolds", 0.5)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await shopper.add(sku, 2, key=uuid.uuid4().hex, timeout=0.1)
    assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The cart finishes the change on its own (0.5 s late by the rule, later on a loaded machine).
    for _ in range(300):
        shown = {line.sku: line.qty for line in (await shopper.cart()).items if not line.expired}
        if shown == held_for_cart(suite.dsn, shopper.user) == {sku: 2}:
            break
        await asyncio.sleep(0.1)
    assert await cart_shows_what_is_held(shopper) == {sku: 2}
    await settled(suite)


# --- order -> cart (the hand-over at checkout) -------------------------------------------------------

@pytest.mark.parametrize("retry", ["same", "new"])
@pytest.mark.parametrize("when", [BEFORE, AFTER])
async def test_a_checkout_cut_off_between_order_and_cart(suite, when, retry):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 2)
    rule = cut_all("order", "cart", "CheckoutCart", when)
    key = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await shopper.checkout(key)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE and rule.hits == deadlines.ATTEMPTS
    faults.clear()
    try:
        await shopper.checkout(key if retry == "same" else uuid.uuid4().hex)
    except grpc.aio.AioRpcError as err:
        # The cart was handed over to the first order: it is empty now, and that order is finished.
        assert (when, retry) == (AFTER, "new") and reason(err) == "CART_EMPTY", reason(err)
    await settled(suite)
    (order,) = await shopper.orders()
    assert order.status == order_pb2.PENDING_PAYMENT and [(i.sku, i.qty) for i in order.items] == [(sku, 2)]
    assert (await shopper.cart()).items == []
    paid = await shopper.pay(order, uuid.uuid4().hex)
    assert paid.status == order_pb2.PAID and charges_standing(suite.dsn, order.order_id) == 1
    await settled(suite)
    stock = await suite.stock(sku)
    assert (stock.on_hand, stock.reserved) == (18, 0)


@pytest.mark.parametrize("retry", ["same", "new", "none"])
async def test_a_hand_over_cut_off_between_cart_and_inventory(suite, retry):
    """The cart's move of its holds to the order loses every answer (the cart rolls back, the order
    service's retries too): the shopper's retry still ends with one order holding the units."""
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 2)
    rule = faults.cut("cart", "inventory", "ExtendHolds", AFTER, times=deadlines.ATTEMPTS ** 2)
    key = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await shopper.checkout(key)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE and rule.hits == deadlines.ATTEMPTS ** 2
    faults.clear()
    if retry == "none":
        # The shopper gives up: the reconciler gives the moved holds back to the cart, which still shows them.
        await settled(suite)
        assert await shopper.orders() == [] and await cart_shows_what_is_held(shopper) == {sku: 2}
        return
    order = await shopper.checkout(key if retry == "same" else uuid.uuid4().hex)
    assert [(i.sku, i.qty) for i in order.items] == [(sku, 2)]
    await settled(suite)
    assert [o.order_id for o in await shopper.orders()] == [order.order_id]
    assert (await shopper.cart()).items == []
    assert (await suite.stock(sku)).reserved == 2


async def test_a_removal_whose_answer_was_lost_is_not_shown_or_checked_out(suite):
    kept, removed = fresh_sku(), fresh_sku()
    await suite.set_stock(kept, 20)
    await suite.set_stock(removed, 20)
    shopper = Shopper(suite)
    await shopper.add(kept, 1)
    await shopper.add(removed, 1)
    faults.cut("cart", "inventory", "ReleaseHolds", AFTER, times=deadlines.ATTEMPTS)
    with pytest.raises(grpc.aio.AioRpcError):
        await shopper.set(removed, 0)
    faults.clear()
    assert await cart_shows_what_is_held(shopper) == {kept: 1}
    order = await shopper.checkout()
    assert [(i.sku, i.qty) for i in order.items] == [(kept, 1)]
    assert (await suite.stock(removed)).reserved == 0
    await settled(suite)


async def test_an_abandoned_checkout_without_a_key_leaves_one_order(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 1)
    faults.cut("order", "cart", "CheckoutCart", AFTER, times=deadlines.ATTEMPTS)
    with pytest.raises(grpc.aio.AioRpcError):
        await shopper.checkout()
    await settled(suite)
    (order,) = await shopper.orders()
    assert order.status == order_pb2.PENDING_PAYMENT
    assert rows(suite.dsn, "SELECT sum(qty) FROM inventory.holds WHERE order_id = %s AND state = 'ACTIVE'",
                order.order_id) == [(1,)]


# --- order -> inventory and order -> provider (payment) ----------------------------------------------

PAY_STEPS = [("inventory", "ExtendHolds"), ("inventory", "CommitHolds"), ("provider", "charge")]


@pytest.mark.parametrize("retry", ["same", "new"])
@pytest.mark.parametrize("when", [BEFORE, AFTER])
@pytest.mark.parametrize("callee,method", PAY_STEPS)
async def test_a_payment_cut_off_between_order_and_its_callees(suite, callee, method, when, retry):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 3)
    order = await shopper.checkout(uuid.uuid4().hex)
    # The provider's charge is not retried by the order service (a lost charge answer is the shopper's
    # 503): one cut reaches the shopper. Inventory calls are retried: every attempt is cut.
    rule = faults.cut("order", callee, method, when, times=1 if callee == "provider" else deadlines.ATTEMPTS)
    key = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await shopper.pay(order, key)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE and rule.hits >= 1
    faults.clear()
    try:
        paid = await shopper.pay(order, key if retry == "same" else uuid.uuid4().hex)
        assert paid.status == order_pb2.PAID
    except grpc.aio.AioRpcError as err:
        # The first attempt sold the units before its answer was lost: the order is paid by it.
        assert (method, when, retry) == ("CommitHolds", AFTER, "new") and reason(err) == "ALREADY_PAID", reason(err)
    (final,) = await shopper.orders()
    assert final.status == order_pb2.PAID, "a charged order whose units were sold is PAID, never refunded and expired"
    assert charges_standing(suite.dsn, order.order_id) == 1
    await settled(suite)
    stock = await suite.stock(sku)
    assert (stock.on_hand, stock.reserved) == (17, 0)


async def test_a_refund_whose_answer_is_lost_is_asked_again(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 1)
    order = await shopper.checkout(uuid.uuid4().hex)
    faults.cut("order", "provider", "charge", AFTER)  # charged, answer lost: the attempt stays pending
    with pytest.raises(grpc.aio.AioRpcError):
        await shopper.pay(order, uuid.uuid4().hex)
    faults.cut("order", "provider", "refund", AFTER, times=3)  # the new attempt's refund of it: lost three times
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await shopper.pay(order, uuid.uuid4().hex)
    assert reason(lost.value) == "PAYMENT_PROVIDER_UNAVAILABLE"
    faults.clear()
    paid = await shopper.pay(order, uuid.uuid4().hex)
    assert paid.status == order_pb2.PAID and charges_standing(suite.dsn, order.order_id) == 1
    await settled(suite)


async def test_an_abandoned_payment_finishes_and_its_retry_answers_paid(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 2)
    order = await shopper.checkout(uuid.uuid4().hex)
    faults.slow("order", "inventory", "CommitHolds", 0.5)
    key = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await shopper.pay(order, key, timeout=0.2)
    assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    again = await shopper.pay(order, key)  # waits for the first to finish, then answers its answer
    assert again.status == order_pb2.PAID and charges_standing(suite.dsn, order.order_id) == 1
    await settled(suite)


# --- inventory's own guard ------------------------------------------------------------------------

async def test_an_expired_hold_moved_twice_is_held_once(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    (hold,) = (await suite.inventory.CreateHolds(inventory_pb2.CreateHoldsRequest(
        owner="cart:x", lines=[inventory_pb2.HoldLine(sku=sku, qty=4)], ttl_seconds=1), timeout=10)).holds
    await asyncio.sleep(1.2)
    moved = []
    for key in ("first", "second", ""):
        (new,) = (await suite.inventory.ExtendHolds(inventory_pb2.ExtendHoldsRequest(
            hold_ids=[hold.hold_id], owner="order:o1", order_id="o1", ttl_seconds=60,
            idempotency_key=f"{key}-{hold.hold_id}" if key else ""), timeout=10)).holds
        moved.append(new.hold_id)
    assert len(set(moved)) == 1 and moved[0] != hold.hold_id
    assert (await suite.stock(sku)).reserved == 4, "naming the expired hold again must not hold its units twice"
    await suite.inventory.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=moved[:1]), timeout=10)


@pytest.mark.parametrize("when", [BEFORE, AFTER])
async def test_an_expiry_whose_release_is_cut_off_is_done_once_by_the_next_pass(suite, when):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 3)
    order = await shopper.checkout(uuid.uuid4().hex)
    # The window has run out (its holds still run a little longer, as after a payment's grace).
    rows(suite.dsn, "UPDATE orders.orders SET pay_before = clock_timestamp() - interval '1 second'"
                    " WHERE id = %s RETURNING 1", order.order_id)
    # The sweeper here is the test's own replica of the order service (its calls go out as "test-replica").
    faults.cut("test-replica", "inventory", "ReleaseHolds", when, times=deadlines.ATTEMPTS)
    with pytest.raises(ServiceError) as lost:
        await suite.orders.expire_due()
    assert lost.value.reason == "DEPENDENCY_UNAVAILABLE"
    assert rows(suite.dsn, "SELECT status FROM orders.orders WHERE id = %s", order.order_id) == [("PENDING_PAYMENT",)]
    faults.clear()
    assert await suite.orders.expire_due() >= 1
    (final,) = await shopper.orders()
    assert final.status == order_pb2.EXPIRED
    stock = await suite.stock(sku)
    assert (stock.on_hand, stock.reserved) == (20, 0)
    await settled(suite)


# --- found by a second review: races with work still under way, long keys, stale replays ------------------

async def sku_locked(dsn: str, sku: str) -> psycopg.AsyncConnection:
    """A connection holding the SKU's advisory lock (as a long stock write under flash-sale load would)."""
    conn = await psycopg.AsyncConnection.connect(dsn)
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (sku_lock_key(sku),))
    return conn


async def waiters(dsn: str, n: int) -> None:
    """Until n sessions wait for an advisory lock."""
    for _ in range(200):
        if rows(dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")[0][0] >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} waiters")


# --- F2: ExtendHolds reads the replacement link before the SKU lock --------------------------------

async def test_an_expired_hold_moved_twice_at_once_is_held_once(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 10)
    (hold,) = (await suite.inventory.CreateHolds(inventory_pb2.CreateHoldsRequest(
        owner="cart:x", lines=[inventory_pb2.HoldLine(sku=sku, qty=4)], ttl_seconds=1), timeout=10)).holds
    await asyncio.sleep(1.2)
    lock = await sku_locked(suite.dsn, sku)

    def move(key: str):
        return suite.inventory.ExtendHolds(inventory_pb2.ExtendHoldsRequest(
            hold_ids=[hold.hold_id], owner="order:o1", order_id="o1", ttl_seconds=60,
            idempotency_key=f"{key}-{hold.hold_id}"), timeout=10)

    first, second = asyncio.ensure_future(move("first")), asyncio.ensure_future(move("second"))
    await waiters(suite.dsn, 2)
    await lock.commit()
    await lock.close()
    a, b = await first, await second
    reserved = (await suite.stock(sku)).reserved
    for h in {a.holds[0].hold_id, b.holds[0].hold_id}:  # leave nothing for the other tests' audits
        await suite.inventory.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[h]), timeout=10)
    assert (a.holds[0].hold_id == b.holds[0].hold_id, reserved) == (True, 4), \
        f"two replacements {a.holds[0].hold_id} and {b.holds[0].hold_id} of one 4-unit hold: reserved={reserved}"


# --- F1: a commit abandoned by a timed-out attempt lands after a new key refunded that attempt -------

async def test_a_late_commit_of_an_abandoned_attempt_leaves_the_order_paid(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 3)
    order = await shopper.checkout(uuid.uuid4().hex)
    # Attempt A: charged, then its CommitHolds waits on the SKU's lock (a busy SKU in a flash sale) longer
    # than the order service's three 4 s attempts; inventory keeps the abandoned commit going (detached).
    faults.slow("order", "inventory", "CommitHolds", 1.0)
    a = asyncio.ensure_future(shopper.pay(order, "key-A"))
    for _ in range(100):
        if rows(suite.dsn, "SELECT count(*) FROM orders.provider_charges c JOIN orders.payments p USING (payment_id)"
                           " WHERE p.order_id = %s", order.order_id)[0][0]:
            break
        await asyncio.sleep(0.02)
    lock = await sku_locked(suite.dsn, sku)
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await a
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE  # the shopper is told to retry
    # The shopper pays again with a new key; A's commit is still waiting in inventory.
    b = asyncio.ensure_future(shopper.pay(order, "key-B"))
    await waiters(suite.dsn, 2)  # A's abandoned commit, then B's ExtendHolds
    await lock.commit()
    await lock.close()
    outcome = None
    try:
        outcome = (await b).status
    except grpc.aio.AioRpcError as err:
        outcome = reason(err)
    await asyncio.sleep(0.5)
    states = rows(suite.dsn, "SELECT h.state FROM inventory.holds h JOIN orders.items i ON i.hold_id = h.id"
                             " WHERE i.order_id = %s", order.order_id)
    status = rows(suite.dsn, "SELECT status FROM orders.orders WHERE id = %s", order.order_id)[0][0]
    await suite.reconcile()
    await suite.orders.expire_due()
    status_after = rows(suite.dsn, "SELECT status FROM orders.orders WHERE id = %s", order.order_id)[0][0]
    violations = audit_dsn(suite.dsn)
    assert (status_after, charges_standing(suite.dsn, order.order_id), violations) == ("PAID", 1, []), (
        f"B answered {outcome}; holds {states}; order {status} -> {status_after} after reconcile and expiry;"
        f" charges standing {charges_standing(suite.dsn, order.order_id)}; audit {violations}")


# --- F4: an add to a line whose hold a cut-off hand-over moved drops the line's units ------------------

async def test_an_add_after_a_cut_off_hand_over_adds_on_top_of_the_line(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 2)
    faults.cut("cart", "inventory", "ExtendHolds", AFTER, times=deadlines.ATTEMPTS ** 2)
    with pytest.raises(grpc.aio.AioRpcError):
        await shopper.checkout(uuid.uuid4().hex)
    faults.clear()
    before = {x.sku: x.qty for x in (await shopper.cart()).items}
    assert before == {sku: 2}  # the cart still shows the line (its hold went to the cut-off order)
    answer = await shopper.add(sku, 1)
    shown = {x.sku: x.qty for x in answer.items}
    for _ in range(2):
        await suite.reconcile()
    after = {x.sku: x.qty for x in (await shopper.cart()).items}
    assert (shown, after) == ({sku: 3}, {sku: 3}), (
        f"cart showed {before}; an add of 1 answered {shown}; after reconciler passes it shows {after}"
        f" (held for the cart: {held_for_cart(suite.dsn, shopper.user)})")


# --- F5: a valid long Idempotency-Key is refused ---------------------------------------------------------

async def test_a_255_character_idempotency_key_is_accepted(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    key = "k" * 250  # API.md: Idempotency-Key of 1..255 characters
    try:
        answer = await shopper.add(sku, 1, key=key)
    except grpc.aio.AioRpcError as err:
        pytest.fail(f"POST /chart with a {len(key)}-character key: {err.code().name} {reason(err)} {err.details()}")
    assert [(x.sku, x.qty) for x in answer.items] == [(sku, 1)]


# --- F9: a replayed add answers a stale quantity ---------------------------------------------------------

async def test_a_replayed_add_answers_what_is_held(suite):
    sku = fresh_sku()
    await suite.set_stock(sku, 20)
    shopper = Shopper(suite)
    await shopper.add(sku, 1)
    faults.cut("cart", "inventory", "ResizeHold", AFTER, times=deadlines.ATTEMPTS)
    with pytest.raises(grpc.aio.AioRpcError):
        await shopper.add(sku, 2, key="K")  # inventory grew the hold to 3; the answer was lost
    faults.clear()
    await shopper.set(sku, 5)  # then the shopper sets the line to 5
    answer = await shopper.add(sku, 2, key="K")  # and the lost add's retry
    shown = {x.sku: x.qty for x in answer.items}
    held = held_for_cart(suite.dsn, shopper.user)
    assert shown == held, f"the retried add answers {shown}, inventory holds {held} for the cart"
