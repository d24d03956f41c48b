"""The order's rules (order_svc.service.Orders) with fakes of its repository, of the cart, inventory, catalog
and payment provider."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import grpc
import pytest

from cart_svc import repository as cart_repository
from cart_svc.client import CartClient, HandedLine
from cart_svc.service import Carts
from catalog_svc.client import Product
from inventory_svc.client import ACTIVE, COMMITTED, RELEASED
from order_svc import repository
from order_svc.model import DECLINED, EXPIRED, PAID, PENDING, PENDING_PAYMENT, REFUNDED, SUCCEEDED
from order_svc.payments import PaymentProvider
from order_svc.service import Orders
from order_svc.servicer import STATUSES, order_pb
from shop.order.v1 import order_pb2
from tests.clock import ManualClock
from shop_runtime.live_settings import LiveSettings
from tests.unit.fakes.cart import FakeCart
from tests.unit.fakes.catalog import FakeCatalog
from tests.unit.fakes.checks import assert_fakes_match, install, refused
from tests.unit.fakes.db import FakeConnection, FakePool
from tests.unit.fakes.inventory import FakeInventory
from tests.unit.fakes.payments import FakeProvider
from tests.unit.fakes.repositories import FakeCartRepository, FakeOrderRepository

USER = "alice"
WINDOW = LiveSettings(None).get("payment_window_seconds")
START = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
TOTAL = 2 * 1_000 + 1 * 500


class World:
    """An order service on fakes."""

    def __init__(self, monkeypatch):
        self.clock = ManualClock(START)
        self.inventory = FakeInventory(self.clock, {"A": 10, "B": 5})
        self.catalog = FakeCatalog({"A": Product("Apple", 1_000), "B": Product("Banana", 500)})
        self.cart = FakeCart(self.inventory)
        self.provider = FakeProvider()
        self.repo = FakeOrderRepository(self.clock)
        install(monkeypatch, repository, self.repo)
        self.pool = FakePool()
        self.orders = self.make_orders(self.cart)

    def make_orders(self, cart) -> Orders:
        orders = Orders(self.pool, "", cart, self.catalog, self.inventory, self.provider, LiveSettings(None),
                        self.clock)
        orders._side = self.pool.side  # its own connection, committing at once: never rolled back
        return orders

    async def fill_cart(self, user: str = USER) -> None:
        await self.cart.put(user, "A", 2, "Apple", 1_000)
        await self.cart.put(user, "B", 1, "Banana", 500)

    async def ordered(self, key: str = "c1"):
        """An order of A x 2 and B x 1, awaiting payment."""
        await self.fill_cart()
        return await self.orders.checkout(USER, key)

    def pay(self, order, key: str, token: str = "tok_visa", amount: int = TOTAL):
        return self.orders.pay(USER, key, order.id, amount, "card", token)

    def stored(self, order):
        return self.repo.orders[order.id]

    def hold_states(self, order) -> list[str]:
        return [self.inventory.hold_of(h).state for h in self.stored(order).hold_ids]


@pytest.fixture
def world(monkeypatch) -> World:
    return World(monkeypatch)


def test_the_fakes_offer_what_the_real_clients_do():
    assert_fakes_match((FakeCart, CartClient), (FakeProvider, PaymentProvider))


# --- checkout -------------------------------------------------------------------------------------

async def test_checkout_stores_an_order_from_the_hand_over(world):
    order = await world.ordered()

    assert order.status == PENDING_PAYMENT and order.user_id == USER
    assert order.total == TOTAL
    assert [(i.sku, i.name, i.price, i.qty) for i in order.items] == [("A", "Apple", 1_000, 2), ("B", "Banana", 500, 1)]
    assert order.pay_before == START + timedelta(seconds=WINDOW)
    assert world.stored(order) == order
    for item in order.items:
        hold = world.inventory.hold_of(item.hold_id)
        assert (hold.owner, hold.order_id, hold.state) == (f"order:{order.id}", order.id, ACTIVE)
    assert world.cart.lines[USER] == []
    assert await world.orders.get(USER, order.id) == order
    await refused("ORDER_NOT_FOUND", world.orders.get("bob", order.id))


async def test_the_same_checkout_key_answers_the_same_order(world):
    order = await world.ordered("c1")
    await world.fill_cart()  # a new cart meanwhile

    again = await world.orders.checkout(USER, "c1")

    assert again == order
    assert world.cart.hand_over_calls == 1
    assert len(world.repo.orders) == 1 and len(world.cart.lines[USER]) == 2  # the new cart was not taken
    other = await world.orders.checkout(USER, "c2")
    assert other.id != order.id


async def test_a_refused_hand_over_drops_the_checkout_record(world):
    err = await refused("CART_EMPTY", world.orders.checkout(USER, "c1"))

    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert world.repo.checkouts == {} and world.repo.orders == {}
    await world.fill_cart()  # the key may be used again once there is something to order
    order = await world.orders.checkout(USER, "c1")
    assert order.total == TOTAL


async def test_a_checkout_whose_hand_over_is_lost_keeps_its_record(world):
    await world.fill_cart()
    world.cart.lose_next("hand_over", after=True)

    err = await refused("DEPENDENCY_UNAVAILABLE", world.orders.checkout(USER, "c1"))

    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert len(world.repo.checkouts) == 1 and world.repo.orders == {}
    order = await world.orders.checkout(USER, "c1")  # the retry gets the stored hand-over
    assert order.total == TOTAL and list(world.repo.checkouts) == [order.id]


# --- payment --------------------------------------------------------------------------------------

async def test_pay_charges_once_and_sells_the_holds(world):
    order = await world.ordered()

    paid = await world.pay(order, "p1")

    assert paid.status == PAID and paid.payment_id and paid.paid_at == START
    assert world.provider.standing() == {paid.payment_id: TOTAL}
    assert world.hold_states(order) == [COMMITTED, COMMITTED]
    assert world.inventory.on_hand == {"A": 8, "B": 4}
    assert world.catalog.sold == {"A": 2, "B": 1}  # delivered through the outbox at once
    assert [(a.payment_id, a.state) for a in world.repo.attempts_of(order.id)] == [(paid.payment_id, SUCCEEDED)]

    again = await world.pay(order, "p1")

    assert again == paid
    assert world.provider.charge_calls == 1
    assert world.catalog.sold == {"A": 2, "B": 1}
    await refused("ALREADY_PAID", world.pay(order, "p2"))
    assert world.provider.standing() == {paid.payment_id: TOTAL}


async def test_an_amount_other_than_the_total_is_refused(world):
    order = await world.ordered()

    err = await refused("AMOUNT_MISMATCH", world.pay(order, "p1", amount=TOTAL - 1))

    assert err.metadata == {"total": str(TOTAL)}
    assert world.provider.charge_calls == 0 and world.repo.attempts_of(order.id) == []
    assert world.stored(order).status == PENDING_PAYMENT and world.hold_states(order) == [ACTIVE, ACTIVE]


async def test_a_declined_payment_keeps_the_order_payable(world):
    order = await world.ordered()

    await refused("PAYMENT_DECLINED", world.pay(order, "p1", token="tok_declined"))

    assert world.stored(order).status == PENDING_PAYMENT
    assert world.hold_states(order) == [ACTIVE, ACTIVE]
    assert world.provider.standing() == {}
    assert [a.state for a in world.repo.attempts_of(order.id)] == [DECLINED]
    await refused("PAYMENT_DECLINED", world.pay(order, "p1", token="tok_declined"))  # replayed for its key
    assert world.provider.charge_calls == 1

    paid = await world.pay(order, "p2")

    assert paid.status == PAID and world.provider.standing() == {paid.payment_id: TOTAL}


async def test_a_lost_charge_answer_retried_with_the_same_key_charges_once(world):
    order = await world.ordered()
    world.provider.lose_next_charge()

    err = await refused("PAYMENT_PROVIDER_UNAVAILABLE", world.pay(order, "p1"))

    assert err.code == grpc.StatusCode.UNAVAILABLE
    (attempt,) = world.repo.attempts_of(order.id)
    assert attempt.state == PENDING and world.provider.standing() == {attempt.payment_id: TOTAL}
    assert world.stored(order).status == PENDING_PAYMENT and world.hold_states(order) == [ACTIVE, ACTIVE]

    paid = await world.pay(order, "p1")

    assert paid.status == PAID and paid.payment_id == attempt.payment_id
    assert world.provider.standing() == {attempt.payment_id: TOTAL}  # asked twice, charged once
    assert world.hold_states(order) == [COMMITTED, COMMITTED]


async def test_a_sale_whose_answer_was_lost_is_paid_by_its_attempt_not_by_a_new_key(world):
    """The key case: CommitHolds sold the units, its answer was lost; a new key must not refund and expire."""
    order = await world.ordered()
    world.inventory.lose_next("commit", after=True)

    await refused("DEPENDENCY_UNAVAILABLE", world.pay(order, "p1"))

    (first,) = world.repo.attempts_of(order.id)
    assert world.hold_states(order) == [COMMITTED, COMMITTED]  # sold in inventory...
    assert world.stored(order).status == PENDING_PAYMENT  # ...not recorded by the order

    await refused("ALREADY_PAID", world.pay(order, "p2"))

    stored = world.stored(order)
    assert stored.status == PAID and stored.payment_id == first.payment_id
    assert world.provider.standing() == {first.payment_id: TOTAL}  # its charge kept, no other
    assert world.provider.refunded == set()
    assert [a.state for a in world.repo.attempts_of(order.id)] == [SUCCEEDED]  # p2 made no attempt
    assert world.hold_states(order) == [COMMITTED, COMMITTED]
    assert await world.orders.deliver_sales() == 1 and world.catalog.sold == {"A": 2, "B": 1}
    assert (await world.pay(order, "p1")).status == PAID  # its own key answers paid


async def test_a_pending_attempt_that_did_not_sell_is_refunded_when_a_new_key_pays(world):
    order = await world.ordered()
    world.provider.lose_next_charge()
    await refused("PAYMENT_PROVIDER_UNAVAILABLE", world.pay(order, "p1"))
    (first,) = world.repo.attempts_of(order.id)

    paid = await world.pay(order, "p2")

    assert paid.status == PAID and paid.payment_id != first.payment_id
    assert world.provider.refunded == {first.payment_id}
    assert world.provider.standing() == {paid.payment_id: TOTAL}  # one charge stands
    assert [a.state for a in world.repo.attempts_of(order.id)] == [REFUNDED, SUCCEEDED]
    await refused("ALREADY_PAID", world.pay(order, "p1"))
    assert world.provider.standing() == {paid.payment_id: TOTAL}


async def test_a_payment_after_the_window_is_refused_and_charges_nothing(world):
    order = await world.ordered()
    world.clock.advance(WINDOW)

    await refused("ORDER_EXPIRED", world.pay(order, "p1"))

    assert world.provider.charge_calls == 0 and world.repo.attempts_of(order.id) == []
    assert (await world.orders.get(USER, order.id)).status == EXPIRED


# --- expiry ---------------------------------------------------------------------------------------

async def test_expiry_releases_the_holds_and_refunds_pending_charges(world):
    order = await world.ordered()
    world.provider.lose_next_charge()
    await refused("PAYMENT_PROVIDER_UNAVAILABLE", world.pay(order, "p1"))
    (attempt,) = world.repo.attempts_of(order.id)
    world.clock.advance(WINDOW - 1)
    assert await world.orders.expire_due() == 0

    world.clock.advance(1)
    assert await world.orders.expire_due() == 1

    assert world.stored(order).status == EXPIRED
    assert world.hold_states(order) == [RELEASED, RELEASED]
    assert world.inventory.available("A") == 10 and world.inventory.available("B") == 5
    assert world.provider.standing() == {} and world.provider.refunded == {attempt.payment_id}
    assert [a.state for a in world.repo.attempts_of(order.id)] == [REFUNDED]
    assert await world.orders.expire_due() == 0


async def test_expiry_finishes_as_paid_an_order_whose_holds_were_sold(world):
    order = await world.ordered()
    world.inventory.lose_next("commit", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", world.pay(order, "p1"))
    (attempt,) = world.repo.attempts_of(order.id)
    world.clock.advance(WINDOW)

    assert await world.orders.expire_due() == 1

    stored = world.stored(order)
    assert stored.status == PAID and stored.payment_id == attempt.payment_id
    assert world.provider.standing() == {attempt.payment_id: TOTAL} and world.provider.refunded == set()
    assert world.hold_states(order) == [COMMITTED, COMMITTED]
    assert await world.orders.deliver_sales() == 1 and world.catalog.sold == {"A": 2, "B": 1}


async def test_expiry_leaves_a_paid_order_alone(world):
    order = await world.ordered()
    paid = await world.pay(order, "p1")
    world.clock.advance(WINDOW * 2)

    assert await world.orders.expire_due() == 0
    assert world.stored(order) == paid and world.provider.refunded == set()


# --- reconciler -----------------------------------------------------------------------------------

async def test_the_reconciler_finishes_a_checkout_whose_hand_over_happened(world):
    await world.fill_cart()
    world.cart.lose_next("hand_over", after=True)  # the cart handed over; its answer never came back
    await refused("DEPENDENCY_UNAVAILABLE", world.orders.checkout(USER, "c1"))
    (order_id,) = world.repo.checkouts
    world.clock.advance(30)
    assert await world.orders.reconcile() == 0  # too young: the checkout may still be under way

    world.clock.advance(31)
    assert await world.orders.reconcile() == 1

    order = world.repo.orders[order_id]
    assert order.status == PENDING_PAYMENT and order.total == TOTAL
    assert order.hold_ids == [h.hold_id for h in world.cart.handed[order_id][1]]
    assert order.pay_before == START + timedelta(seconds=WINDOW)  # the hand-over's window, not a new one
    assert world.hold_states(order) == [ACTIVE, ACTIVE]  # an order awaiting payment keeps its holds
    assert await world.orders.checkout(USER, "c1") == await world.orders.get(USER, order_id)
    assert (await world.pay(order, "p1")).status == PAID
    assert await world.orders.reconcile() == 0


async def test_the_reconciler_drops_a_checkout_whose_hand_over_never_happened(world):
    await world.fill_cart()
    world.cart.lose_next("hand_over", after=False)
    await refused("DEPENDENCY_UNAVAILABLE", world.orders.checkout(USER, "c1"))
    assert len(world.repo.checkouts) == 1
    world.clock.advance(61)

    assert await world.orders.reconcile() == 0

    assert world.repo.checkouts == {} and world.repo.orders == {}
    assert len(world.cart.lines[USER]) == 2  # the cart keeps its lines and their holds
    assert [h.state for h in world.inventory.holds_of(f"cart:{USER}")] == [ACTIVE, ACTIVE]


async def test_the_reconciler_settles_a_cut_off_payment(world):
    sold = await world.ordered("c1")
    world.inventory.lose_next("commit", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", world.pay(sold, "p1"))
    await world.fill_cart()
    unsold = await world.orders.checkout(USER, "c2")
    world.provider.lose_next_charge()
    await refused("PAYMENT_PROVIDER_UNAVAILABLE", world.pay(unsold, "p2"))
    (sold_attempt,), (unsold_attempt,) = world.repo.attempts_of(sold.id), world.repo.attempts_of(unsold.id)
    world.clock.advance(61)

    assert await world.orders.reconcile() == 1

    assert world.stored(sold).status == PAID and world.stored(sold).payment_id == sold_attempt.payment_id
    # The unsold one's commit may still be on its way: its charge stands until the order's next payment
    # takes the units over (or its window ends).
    assert world.stored(unsold).status == PENDING_PAYMENT
    assert (await world.pay(unsold, "p3")).status == PAID
    assert unsold_attempt.payment_id in world.provider.refunded
    assert set(world.provider.standing()) == {sold_attempt.payment_id, world.stored(unsold).payment_id}


async def test_the_reconciler_releases_holds_still_active_for_an_order_that_ended(world):
    order = await world.ordered()
    ended = await world.ordered("c2")
    await world.repo.mark_expired(FakeConnection(), ended.id)  # ended while a hold of it stayed active
    world.clock.advance(61)

    assert await world.orders.reconcile() == 2  # both of the ended order's holds

    assert world.hold_states(ended) == [RELEASED, RELEASED]
    assert world.hold_states(order) == [ACTIVE, ACTIVE]  # an order awaiting payment keeps its holds


async def test_the_reconciler_gives_a_cut_off_hand_over_back_to_the_cart(world):
    stray_order = "00000000-0000-0000-0000-000000000001"  # the cart moved its hold, then rolled back
    (stray,) = await world.inventory.hold("cart:bob", {"A": 1}, 900, "")
    await world.inventory.extend([stray.hold_id], f"order:{stray_order}", stray_order, 900, "")
    await world.repo.add_checkout(FakeConnection(), stray_order, "bob", None)
    world.clock.advance(61)

    assert await world.orders.reconcile() == 1

    back = world.inventory.hold_of(stray.hold_id)
    assert (back.state, back.owner) == (ACTIVE, "cart:bob")
    assert world.repo.checkouts == {}


# --- across the cart and the order ----------------------------------------------------------------

class CartsAsClient:
    """The real cart rules behind the order's view of the cart (what CartClient does over gRPC)."""

    def __init__(self, carts: Carts):
        self._carts = carts

    async def hand_over(self, user: str, order_id: str, ttl_seconds: int, *,
                        replay_only: bool = False) -> list[HandedLine]:
        return await self._carts.checkout(user, order_id, ttl_seconds, replay_only)


async def test_a_hand_over_cut_off_in_the_cart_keeps_the_carts_units(world, monkeypatch):
    cart_repo = FakeCartRepository()
    install(monkeypatch, cart_repository, cart_repo)
    carts = Carts(world.pool, world.inventory, world.catalog, LiveSettings(None), world.clock)
    orders = world.make_orders(CartsAsClient(carts))
    await carts.add(USER, "A", 2, "k1")
    world.inventory.lose_next("extend", after=True)  # the hold moved to the order; the cart rolled back

    await refused("DEPENDENCY_UNAVAILABLE", orders.checkout(USER, "c1"))
    world.clock.advance(61)  # nobody retried the checkout within the reconciler's age
    await orders.reconcile()

    assert [(x.sku, x.qty, x.expired) for x in (await carts.view(USER)).lines] == [("A", 2, False)]
    assert world.inventory.available("A") == 8


async def test_orphans_past_the_first_page_are_released(world):
    pending = await world.ordered("c1")          # an order awaiting payment
    ended = await world.ordered("c2")
    await world.repo.mark_expired(FakeConnection(), ended.id)  # ended while its holds stayed active
    # A flash sale: 200 more active holds of orders awaiting payment, older than a minute, whose ids sort
    # before the ended order's holds (ids are random uuids: which page a hold lands on is luck).
    for i in range(200):
        h = world.inventory._new_hold(f"order:{pending.id}", "A", 1, 3600, pending.id)
        del world.inventory.stored[h.hold_id]
        h.hold_id = f"00000000-0000-4000-8000-{i:012d}"
        world.inventory.stored[h.hold_id] = h
    world.inventory.on_hand["A"] += 200
    world.clock.advance(61)

    for _ in range(5):  # five reconciler passes
        await world.orders.reconcile()

    assert world.hold_states(ended) == [RELEASED, RELEASED], \
        "an ended order's holds are still active after 5 reconciler passes"


def test_every_order_status_is_shown_as_the_enum_value_of_its_name():
    # The servicer's table from the model's statuses to the message's enum covers every status and no other.
    assert {status: order_pb2.OrderStatus.Name(value) for status, value in STATUSES.items()} == \
        {status: status for status in (PENDING_PAYMENT, PAID, EXPIRED)}
    assert set(STATUSES) == set(order_pb2.OrderStatus.keys()) - {"ORDER_STATUS_UNSPECIFIED"}


# --- prices held with the units ---------------------------------------------------------------------

SALE = "5a1e0000-0000-4000-8000-000000000001"


async def test_an_order_keeps_the_prices_and_campaigns_its_units_were_held_at(world):
    world.inventory.start_sale("A", SALE, 700, quota=3)
    await world.fill_cart()  # A x 2 from the sale's quota at 700, B x 1 at 500
    world.catalog.by_sku["A"] = Product("Apple", 1_500)  # later price changes do not reach the cart's holds

    order = await world.orders.checkout(USER, "c1")

    assert [(i.sku, i.price, i.qty, i.campaign_id) for i in order.items] == [("A", 700, 2, SALE), ("B", 500, 1, "")]
    assert order.total == 2 * 700 + 500
    assert world.stored(order) == order
    message = order_pb(order)
    assert [(x.price, x.subtotal, x.campaign_id) for x in message.items] == [(700, 1_400, SALE), (500, 500, "")]
    assert message.total == 1_900

    world.inventory.end_sale("A")  # neither the sale's end nor a price change touches an order awaiting payment
    world.catalog.by_sku["B"] = Product("Banana", 900)
    assert (await world.orders.get(USER, order.id)).total == 1_900
    await refused("AMOUNT_MISMATCH", world.pay(order, "p0", amount=TOTAL))
    paid = await world.pay(order, "p1", amount=1_900)
    assert paid.status == PAID and [i.price for i in paid.items] == [700, 500]


async def test_a_checkout_whose_expired_sale_line_cannot_be_held_again_is_sale_ended_and_changes_nothing(
        world, monkeypatch):
    cart_repo = FakeCartRepository()
    install(monkeypatch, cart_repository, cart_repo)
    carts = Carts(world.pool, world.inventory, world.catalog, LiveSettings(None), world.clock)
    orders = world.make_orders(CartsAsClient(carts))
    world.inventory.start_sale("A", SALE, 700, quota=3)
    await carts.add(USER, "A", 2, "k1")
    await carts.add(USER, "B", 1, "k2")
    world.clock.advance(LiveSettings(None).get("reservation_ttl_seconds") + 1)
    world.inventory.end_sale("A")
    before = await carts.view(USER)

    err = await refused("SALE_ENDED", orders.checkout(USER, "c1"))

    assert err.code == grpc.StatusCode.ABORTED and err.metadata["skus"] == "A"
    assert world.repo.checkouts == {} and world.repo.orders == {}  # the order book as it was
    assert await carts.view(USER) == before and cart_repo.checkouts == {}  # the cart as it was
    assert not any(h.owner.startswith("order:") for h in world.inventory.stored.values())  # no hold moved


async def test_a_checkout_of_a_live_sales_expired_line_holds_it_again_at_its_price(world, monkeypatch):
    cart_repo = FakeCartRepository()
    install(monkeypatch, cart_repository, cart_repo)
    carts = Carts(world.pool, world.inventory, world.catalog, LiveSettings(None), world.clock)
    orders = world.make_orders(CartsAsClient(carts))
    world.inventory.start_sale("A", SALE, 700, quota=3)
    await carts.add(USER, "A", 2, "k1")
    world.clock.advance(LiveSettings(None).get("reservation_ttl_seconds") + 1)

    order = await orders.checkout(USER, "c1")

    assert [(i.sku, i.price, i.qty, i.campaign_id) for i in order.items] == [("A", 700, 2, SALE)]
    assert order.total == 1_400 and world.inventory.remaining("A") == 1
