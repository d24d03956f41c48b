"""A Hypothesis state machine over flash-sale campaigns and regular buying together, on one SKU.

An admin creates campaigns (some live at once, some scheduled), cancels them and adjusts the stock; shoppers add
(at whatever price, at the sale price, at the regular price), shrink, check out, pay and abandon; the clock moves,
so holds, payment windows and campaign windows open and pass. The four services run in this test's process on real
gRPC, Postgres and Consul, all on one manual clock (tests/clock.py), so an instant is the same for every service
and the machine decides when it moves.

After every step: the suite audit is clean; every campaign item's quota = remaining + held + sold + returned; no
more units were ever held at a sale price than the quota, and none outside the window; what is set aside is what
the open quotas have left; and every buyer is charged exactly the price their cart showed when the units were held
(each line's price is remembered when the cart shows it, and checked again at checkout and payment).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import uuid
from datetime import timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from hypothesis.stateful import run_state_machine_as_test

from devstack.postgres import create_database, dsn_for
from devstack.prepare import prepare
from devstack.procs import start_consul
from shop.cart.v1 import cart_pb2
from shop.inventory.v1 import inventory_pb2
from shop.order.v1 import order_pb2
from tests.audit import audit_dsn
from tests.clock import ManualClock
from tests.integration.purchase_support import Shopper, SuiteThread, reason, rows

PRICE = 1_000
SALE_PRICE = 600
STOCK = 20
USERS = 5
# Refusals a step may get in a sale that goes right; anything else fails the test.
BUSINESS = {"OUT_OF_STOCK", "SALE_SOLD_OUT", "PRICE_CHANGED", "SALE_ENDED", "PURCHASE_LIMIT", "QTY_LIMIT",
            "CART_EMPTY", "ORDER_EXPIRED", "ALREADY_PAID", "CAMPAIGN_OVERLAP", "BELOW_RESERVED"}
_PRODUCTS = itertools.count(1)
ADMIN = [("x-shop-user-id", "model-admin")]


async def called(stub, method: str, request, metadata: list[tuple[str, str]]):
    """A stub's call made inside the suite's loop (a grpc.aio call starts on the loop it is made on)."""
    return await getattr(stub, method)(request, metadata=metadata, timeout=30)


def stamp(t) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


@pytest.fixture(scope="module")
def shop(pg_admin_dsn, log_dir):
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    asyncio.run(prepare(dsn, demo=False))
    ports, consul = start_consul(log_dir)
    clock = ManualClock()
    try:
        running = SuiteThread(dsn, ports.consul_addr, clock)
        running.clock = clock
        try:
            yield running
        finally:
            running.close()
    finally:
        consul.stop()


class CampaignMachine(RuleBasedStateMachine):
    shop: SuiteThread
    # What the steps came to over the whole run (printed at the end, so a run that never sold at a sale price shows).
    outcomes: collections.Counter[str] = collections.Counter()

    @initialize()
    def open_shop(self):
        self.suite = self.shop.suite
        self.clock: ManualClock = self.shop.clock
        self.dsn = self.suite.dsn
        self.sku = f"CM-{next(_PRODUCTS):04d}"
        rows(self.dsn, "INSERT INTO catalog.categories (slug, name) VALUES ('model', 'Model') ON CONFLICT DO NOTHING"
                       " RETURNING 1")
        rows(self.dsn, "INSERT INTO catalog.products (sku, name, category, price) VALUES (%s, %s, 'model', %s)"
                       " RETURNING 1", self.sku, f"Model product {self.sku}", PRICE)
        self.shop.call(self.suite.set_stock(self.sku, STOCK))
        run = uuid.uuid4().hex[:6]
        self.shoppers = [Shopper(self.suite, f"cm-{run}-{i}") for i in range(USERS)]
        self.campaigns: list[str] = []
        # (user, hold id) -> the price the cart showed for the line of that hold.
        self.shown: dict[tuple[str, str], int] = {}
        # Every run opens with a sale live now (more are scheduled, overlap or not, by the steps).
        self.create_campaign(starts_in=0, runs=600, quota=5, max_per_user=2)

    def _call(self, what: str, coro):
        """The call's answer, or None after a refusal that makes sense (anything else fails the test)."""
        try:
            answer = self.shop.call(coro)
        except grpc.aio.AioRpcError as err:
            assert reason(err) in BUSINESS, f"{what}: {err.code().name} {reason(err)} {err.details()}"
            event(f"{what}: {reason(err)}")
            self.outcomes[f"{what}: {reason(err)}"] += 1
            return None
        event(f"{what}: done")
        self.outcomes[f"{what}: done"] += 1
        return answer

    def _remember(self, user: str, cart: cart_pb2.Cart) -> None:
        """What the cart shows is what its buyer expects to pay for those units."""
        holds = dict(rows(self.dsn, "SELECT sku, id::text FROM inventory.holds WHERE owner = %s AND state = 'ACTIVE'",
                          f"cart:{user}"))
        for line in cart.items:
            if not line.expired and line.sku in holds:
                key = (user, holds[line.sku])
                # One line, one price: a line's price never changes while its units are held.
                assert self.shown.setdefault(key, line.price) == line.price, (key, line.price)

    # --- the admin ------------------------------------------------------------------------------

    @rule(starts_in=st.sampled_from([0, 0, 5, 20, 60]), runs=st.sampled_from([30, 120, 600]),
          quota=st.integers(1, 6), max_per_user=st.integers(0, 2))
    def create_campaign(self, starts_in, runs, quota, max_per_user):
        now = self.clock.now()
        start = now + timedelta(seconds=starts_in)
        answer = self._call("create", called(self.suite.inventory, "CreateCampaign", inventory_pb2.CreateCampaignRequest(
            name="model sale", starts_at=stamp(start), ends_at=stamp(start + timedelta(seconds=runs)),
            items=[inventory_pb2.NewCampaignItem(sku=self.sku, sale_price=SALE_PRICE, quota=quota,
                                                 max_per_user=max_per_user)],
            idempotency_key=uuid.uuid4().hex), ADMIN))
        if answer is not None:
            self.campaigns.append(answer.campaign_id)

    @precondition(lambda self: bool(getattr(self, "campaigns", None)))
    @rule(i=st.integers(0, 10), really=st.integers(0, 3))
    def cancel_campaign(self, i, really):
        if really:  # an admin cancels now and then, not at every other step
            return
        campaign_id = self.campaigns[i % len(self.campaigns)]
        self._call("cancel", called(self.suite.inventory, "CancelCampaign", inventory_pb2.CancelCampaignRequest(
            campaign_id=campaign_id, idempotency_key=uuid.uuid4().hex), ADMIN))

    @rule(delta=st.integers(-3, 4).filter(bool))
    def adjust_stock(self, delta):
        self._call("adjust", called(self.suite.inventory, "AdjustStock", inventory_pb2.AdjustStockRequest(
            sku=self.sku, delta=delta, reason=inventory_pb2.CORRECTION), ADMIN + [("idempotency-key", uuid.uuid4().hex)]))

    # --- the shoppers ---------------------------------------------------------------------------

    @rule(i=st.integers(0, USERS - 1), qty=st.integers(1, 2), expect=st.sampled_from([0, SALE_PRICE, PRICE]))
    def add(self, i, qty, expect):
        shopper = self.shoppers[i]
        cart = self._call("add", called(
            self.suite.cart, "AddItem", cart_pb2.AddItemRequest(sku=self.sku, qty=qty, expected_price=expect),
            [("x-shop-user-id", shopper.user)]))
        if cart is not None:
            (line,) = [x for x in cart.items if x.sku == self.sku]
            if expect:
                assert line.price == expect
            self.outcomes["add: at the sale price" if line.campaign_id else "add: at the regular price"] += 1
            self._remember(shopper.user, cart)

    @rule(i=st.integers(0, USERS - 1), qty=st.integers(1, 2))
    def add_at_the_sale_price(self, i, qty):
        """What a crowd does in a sale: adds at the sale price the storefront shows."""
        self.add(i, qty, SALE_PRICE)

    @rule(i=st.integers(0, USERS - 1), qty=st.integers(0, 2))
    def shrink(self, i, qty):
        shopper = self.shoppers[i]
        cart = self._call("set", shopper.set(self.sku, qty))
        if cart is not None:
            self._remember(shopper.user, cart)

    @rule(i=st.integers(0, USERS - 1))
    def look(self, i):
        shopper = self.shoppers[i]
        self._remember(shopper.user, self.shop.call(shopper.cart()))

    @rule(i=st.integers(0, USERS - 1), pay_now=st.booleans())
    def checkout(self, i, pay_now):
        shopper = self.shoppers[i]
        if not self.shop.call(shopper.cart()).items:
            return
        order = self._call("checkout", shopper.checkout(uuid.uuid4().hex))
        if order is None:
            return
        held = dict(rows(self.dsn, "SELECT sku, id::text FROM inventory.holds WHERE order_id = %s",
                         order.order_id))
        for line in order.items:
            # A line held anew at checkout (its hold had expired) is priced as its hold was.
            shown = self.shown.get((shopper.user, held[line.sku]))
            if shown is not None:
                assert line.price == shown, (line, shown)
        assert order.total == sum(x.price * x.qty for x in order.items)
        if pay_now:
            paid = self._call("pay", shopper.pay(order, uuid.uuid4().hex))
            if paid is not None:
                assert paid.total == order.total

    @rule(i=st.integers(0, USERS - 1))
    def pay(self, i):
        shopper = self.shoppers[i]
        pending = [o for o in self.shop.call(shopper.orders()) if o.status == order_pb2.PENDING_PAYMENT]
        if pending:
            paid = self._call("pay", shopper.pay(pending[0], uuid.uuid4().hex))
            if paid is not None:
                assert paid.total == pending[0].total

    @rule(seconds=st.sampled_from([1, 5, 15, 45, 700]))
    def time_passes(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def sweepers_run(self):
        self.shop.call(self.suite.reconcile())

    # --- after every step -----------------------------------------------------------------------

    @invariant()
    def exact(self):
        if not hasattr(self, "sku"):
            return
        assert audit_dsn(self.dsn) == []
        now = self.clock.now()
        for campaign_id, quota, remaining, returned, starts_at, ends_at in rows(
                self.dsn, "SELECT i.campaign_id::text, i.quota, i.remaining, i.returned, c.starts_at, c.ends_at"
                          "  FROM inventory.campaign_items i JOIN inventory.campaigns c ON c.id = i.campaign_id"
                          " WHERE i.sku = %s", self.sku):
            ((held, sold, early_or_late),) = rows(
                self.dsn, "SELECT COALESCE(sum(qty) FILTER (WHERE state = 'ACTIVE'), 0)::int,"
                          "       COALESCE(sum(qty) FILTER (WHERE state = 'COMMITTED'), 0)::int,"
                          "       count(*) FILTER (WHERE created_at < %s OR created_at >= %s)::int"
                          "  FROM inventory.holds WHERE campaign_id = %s", starts_at, ends_at, campaign_id)
            assert quota == remaining + held + sold + returned, (campaign_id, quota, remaining, held, sold, returned)
            assert early_or_late == 0, f"{campaign_id}: units held at the sale price outside its window"
            ((ever_sale,),) = rows(self.dsn, "SELECT COALESCE(sum(qty), 0)::int FROM inventory.holds"
                                             " WHERE campaign_id = %s AND state IN ('ACTIVE', 'COMMITTED')",
                                   campaign_id)
            assert ever_sale <= quota
        # What the admin sees set aside is exactly what the quotas not yet ended have left, at this instant.
        stock = self.shop.call(self.suite.stock(self.sku))
        ((open_left,),) = rows(
            self.dsn, "SELECT COALESCE(sum(i.remaining + COALESCE((SELECT sum(h.qty) FROM inventory.holds h"
                      "   WHERE h.campaign_id = i.campaign_id AND h.state = 'ACTIVE' AND h.expires_at <= %s"
                      "     AND h.expires_at < c.ends_at), 0)), 0)::int"
                      "  FROM inventory.campaign_items i JOIN inventory.campaigns c ON c.id = i.campaign_id"
                      " WHERE i.sku = %s AND i.closed_at IS NULL AND c.ends_at > %s", now, self.sku, now)
        assert stock.set_aside == open_left, (stock, open_left)
        assert stock.available == stock.on_hand - stock.reserved - stock.set_aside >= 0
        # Every paid line was charged at the price its cart showed.
        for user, hold_id, price in rows(
                self.dsn, "SELECT o.user_id, i.hold_id::text, i.price FROM orders.items i"
                          " JOIN orders.orders o ON o.id = i.order_id WHERE o.status = 'PAID' AND i.sku = %s",
                self.sku):
            shown = self.shown.get((user, hold_id))
            if shown is not None:
                assert price == shown, (user, hold_id, price, shown)


@pytest.mark.timeout(900)
def test_campaigns_and_regular_buying_stay_exact_as_the_clock_moves(shop):
    CampaignMachine.shop = shop
    run_state_machine_as_test(
        CampaignMachine,
        settings=settings(max_examples=25, stateful_step_count=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )
    print("\ncampaign model: " + ", ".join(f"{k} {v}" for k, v in sorted(CampaignMachine.outcomes.items())))
    # The run must have sold from a quota and refused at least one add for the sale's own reasons.
    assert CampaignMachine.outcomes["add: at the sale price"] > 0
    assert CampaignMachine.outcomes["pay: done"] > 0
