"""A Hypothesis state machine over the whole purchase path: several shoppers, one hot SKU, random cut-offs.

Every step a shopper takes (add, set, checkout, pay) may have one call between services cut off
before or after its callee commits, every attempt of it, so the shopper sees the failure; the
shopper then clicks again with the same key, a new key, or gives up. After every step a
reconciler pass runs and the whole suite must be exact: the suite audit clean (every order line at
its hold's price, whatever an admin did to the catalog's price meanwhile), every cart showing what
inventory holds for it, at the prices it holds it at, a paid order with exactly one standing charge and any other order
with none, and stock conserved. The services run in this test's process on their own event loop
thread (real gRPC, Postgres and Consul), so the cut-offs land exactly where they are asked to.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid

import grpc
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from devstack.postgres import create_database, dsn_for
from devstack.prepare import prepare
from devstack.procs import start_consul
from shop.order.v1 import order_pb2
from shop_runtime import deadlines, faults
from tests.audit import audit_dsn
from tests.integration.purchase_support import Shopper, SuiteThread, held_for_cart, reason, rows

STOCK = 6
USERS = 3
# Refusals a shopper may get for a step that makes sense to try; anything else fails the test.
# PRICE_CHANGED: growing a line after an admin changed its product's price (one line keeps one price).
BUSINESS = {"OUT_OF_STOCK", "QTY_LIMIT", "CART_EMPTY", "ORDER_EXPIRED", "ALREADY_PAID", "PAYMENT_SUPERSEDED",
            "DEPENDENCY_UNAVAILABLE", "PAYMENT_PROVIDER_UNAVAILABLE", "UNAVAILABLE", "PRICE_CHANGED"}
# Where a step can be cut: (caller, callee, method).
CUTS = {
    "change": [("cart", "inventory", "CreateHolds"), ("cart", "inventory", "ResizeHold"),
               ("cart", "inventory", "ReleaseHolds")],
    "checkout": [("order", "cart", "CheckoutCart"), ("cart", "inventory", "ExtendHolds")],
    "pay": [("order", "inventory", "ExtendHolds"), ("order", "inventory", "CommitHolds"),
            ("order", "provider", "charge")],
}
_PRODUCTS = itertools.count(1)


@pytest.fixture(scope="module")
def shop(pg_admin_dsn, log_dir):
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    asyncio.run(prepare(dsn, demo=False))
    ports, consul = start_consul(log_dir)
    try:
        running = SuiteThread(dsn, ports.consul_addr)
        try:
            yield running
        finally:
            running.close()
    finally:
        consul.stop()


def new_product(dsn: str) -> str:
    """A product of its own for one run of the machine."""
    sku = f"PM-{next(_PRODUCTS):04d}"
    rows(dsn, "INSERT INTO catalog.categories (slug, name) VALUES ('model', 'Model') ON CONFLICT DO NOTHING"
              " RETURNING 1")
    rows(dsn, "INSERT INTO catalog.products (sku, name, category, price) VALUES (%s, %s, 'model', 1000)"
              " RETURNING 1", sku, f"Model product {sku}")
    return sku


class PurchaseMachine(RuleBasedStateMachine):
    shop: SuiteThread

    @initialize()
    def open_shop(self):
        self.suite = self.shop.suite
        self.dsn = self.suite.dsn
        self.sku = new_product(self.dsn)
        self.shop.call(self.suite.set_stock(self.sku, STOCK))
        run = uuid.uuid4().hex[:6]
        self.shoppers = [Shopper(self.suite, f"pm-{run}-{i}") for i in range(USERS)]

    def _step(self, kind: str, cut: tuple[int, str] | None, retry: str, attempt) -> None:
        """Runs one shopper step, with a cut-off and a second click as drawn; refusals must make sense."""
        if cut is not None:
            which, when = cut
            caller, callee, method = CUTS[kind][which % len(CUTS[kind])]
            faults.cut(caller, callee, method, when, times=1 if callee == "provider" else deadlines.ATTEMPTS ** 2)
        key = uuid.uuid4().hex
        try:
            self.shop.call(attempt(key))
            event(f"{kind}: done")
            return
        except grpc.aio.AioRpcError as err:
            assert reason(err) in BUSINESS, f"{kind}: {err.code().name} {reason(err)} {err.details()}"
            event(f"{kind}: {reason(err)}" + (f", cut {cut[1]}" if cut else ""))
        finally:
            faults.clear()
        if retry == "give up":
            return
        try:
            self.shop.call(attempt(key if retry == "same key" else uuid.uuid4().hex))
        except grpc.aio.AioRpcError as err:
            assert reason(err) in BUSINESS, f"{kind} again: {err.code().name} {reason(err)} {err.details()}"

    cuts = st.none() | st.tuples(st.integers(0, 2), st.sampled_from([faults.BEFORE, faults.AFTER]))
    retries = st.sampled_from(["same key", "new key", "give up"])

    @rule(i=st.integers(0, USERS - 1), qty=st.integers(1, 2), cut=cuts, retry=retries)
    def add(self, i, qty, cut, retry):
        shopper = self.shoppers[i]
        self._step("change", cut, retry, lambda key: shopper.add(self.sku, qty, key=key))

    @rule(i=st.integers(0, USERS - 1), qty=st.integers(0, 3), cut=cuts, retry=retries)
    def set_line(self, i, qty, cut, retry):
        shopper = self.shoppers[i]
        self._step("change", cut, retry, lambda key: shopper.set(self.sku, qty, key=key))

    @rule(price=st.sampled_from([1_000, 1_500, 2_500]))
    def reprice(self, price):
        """An admin changes the product's regular price: units already held keep theirs."""
        rows(self.dsn, "UPDATE catalog.products SET price = %s WHERE sku = %s RETURNING 1", price, self.sku)

    @rule(i=st.integers(0, USERS - 1), cut=cuts, retry=retries)
    def checkout(self, i, cut, retry):
        shopper = self.shoppers[i]
        self._step("checkout", cut, retry, lambda key: shopper.checkout(key))

    @rule(i=st.integers(0, USERS - 1), cut=cuts, retry=retries)
    def pay(self, i, cut, retry):
        shopper = self.shoppers[i]
        pending = [o for o in self.shop.call(shopper.orders()) if o.status == order_pb2.PENDING_PAYMENT]
        if not pending:
            return
        self._step("pay", cut, retry, lambda key: shopper.pay(pending[0], key))

    @invariant()
    def exact_after_a_reconciler_pass(self):
        if not hasattr(self, "sku"):
            return
        self.shop.call(self.suite.reconcile())
        assert audit_dsn(self.dsn) == []
        for shopper in self.shoppers:
            cart = self.shop.call(shopper.cart())
            assert {x.sku: x.qty for x in cart.items if not x.expired} == held_for_cart(self.dsn, shopper.user)
            assert {x.sku: x.price for x in cart.items if not x.expired} == dict(rows(
                self.dsn, "SELECT sku, price FROM inventory.holds WHERE owner = %s AND state = 'ACTIVE'"
                          " AND expires_at > clock_timestamp()", f"cart:{shopper.user}"))
        orders = rows(self.dsn, "SELECT o.id::text, o.status, (SELECT count(*) FROM orders.provider_charges c"
                                " JOIN orders.payments p ON p.payment_id = c.payment_id WHERE p.order_id = o.id"
                                " AND c.refunded_at IS NULL) FROM orders.orders o WHERE o.user_id LIKE %s",
                      self.shoppers[0].user[:-1] + "%")
        for order_id, status, standing in orders:
            assert standing == (1 if status == "PAID" else 0), (order_id, status, standing)
        ((on_hand, reserved),) = rows(self.dsn, "SELECT on_hand, reserved FROM inventory.stock WHERE sku = %s",
                                      self.sku)
        ((sold,),) = rows(self.dsn, "SELECT COALESCE(sum(qty), 0)::int FROM inventory.holds"
                                    " WHERE sku = %s AND state = 'COMMITTED'", self.sku)
        assert on_hand + sold == STOCK and 0 <= reserved <= on_hand


@pytest.mark.timeout(900)
def test_the_purchase_path_is_exact_under_random_cut_offs(shop):
    PurchaseMachine.shop = shop
    run_state_machine_as_test(
        PurchaseMachine,
        settings=settings(max_examples=25, stateful_step_count=12, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )
