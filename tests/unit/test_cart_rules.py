"""The cart's rules (cart_svc.service.Carts) with fakes of its repository, of inventory and of the catalog."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import grpc
import pytest

from cart_svc import repository
from cart_svc import servicer as cart_servicer
from cart_svc.messages import checkout_pb, handed_lines
from cart_svc.service import Carts
from catalog_svc.client import CatalogClient, Product
from inventory_svc.client import ACTIVE, EXPIRED, RELEASED, InventoryClient
from shop.cart.v1 import cart_pb2
from tests.clock import ManualClock
from shop_runtime.live_settings import LiveSettings
from tests.unit.fakes.catalog import FakeCatalog
from tests.unit.fakes.checks import assert_fakes_match, install, refused
from tests.unit.fakes.db import FakePool
from tests.unit.fakes.inventory import FakeInventory
from tests.unit.fakes.repositories import FakeCartRepository

USER = "alice"
TTL = LiveSettings(None).get("reservation_ttl_seconds")
START = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


class AnsweringCarts(Carts):
    """The cart rules, their checkout answered as the servicer answers CheckoutCart (the message an order gets)."""

    async def checkout(self, *args, **kwargs) -> cart_pb2.CheckoutCartResponse:
        return checkout_pb(await super().checkout(*args, **kwargs))


class World:
    """A cart service on fakes: its repository in memory, inventory and catalog in memory."""

    def __init__(self, monkeypatch, stock: dict[str, int]):
        self.clock = ManualClock(START)
        self.inventory = FakeInventory(self.clock, stock)
        self.catalog = FakeCatalog({"A": Product("Apple", 1_000), "B": Product("Banana", 500),
                                    "Z": Product("Zucchini", 700)})
        self.repo = FakeCartRepository()
        install(monkeypatch, repository, self.repo)
        self.pool = FakePool()
        self.carts = AnsweringCarts(self.pool, self.inventory, self.catalog, LiveSettings(None), self.clock)

    def line(self, sku: str, user: str = USER):
        """The cart's own record of a line (None if there is none)."""
        return self.repo.rows.get((user, sku))

    async def shown(self, user: str = USER) -> dict[str, tuple[int, bool]]:
        """sku -> (qty, expired) as the view shows the cart."""
        return {x.sku: (x.qty, x.expired) for x in (await self.carts.view(user)).lines}


@pytest.fixture
def world(monkeypatch) -> World:
    return World(monkeypatch, {"A": 10, "B": 5, "Z": 0})


@pytest.fixture
def big(monkeypatch) -> World:
    """Plenty of stock, for the line limit."""
    return World(monkeypatch, {"A": 1_000})


def test_the_fakes_offer_what_the_real_clients_do():
    # The campaign calls are the catalog's; the cart and the order never make them.
    assert_fakes_match((FakeInventory, InventoryClient), (FakeCatalog, CatalogClient),
                       not_called=frozenset({"create_campaign", "cancel_campaign", "campaigns", "list_campaigns"}))


# --- adding and setting ---------------------------------------------------------------------------

async def test_add_creates_a_hold_and_a_line(world):
    view = await world.carts.add(USER, "A", 2, "k1")

    (hold,) = world.inventory.holds_of("cart:alice")
    assert (hold.sku, hold.qty, hold.state) == ("A", 2, ACTIVE)
    assert hold.expires_at == START + timedelta(seconds=TTL)
    assert world.inventory.available("A") == 8
    line = world.line("A")
    assert (line.qty, line.hold_id, line.added_at) == (2, hold.hold_id, START)
    assert [(x.sku, x.qty, x.expired, x.subtotal) for x in view.lines] == [("A", 2, False, 2_000)]
    assert view.lines[0].reserved_until == hold.expires_at


async def test_an_add_to_a_line_grows_its_hold_by_the_units(world):
    await world.carts.add(USER, "A", 2, "k1")
    (hold,) = world.inventory.holds_of("cart:alice")

    view = await world.carts.add(USER, "A", 3, "k2")

    assert world.inventory.holds_of("cart:alice") == [world.inventory.hold_of(hold.hold_id)]  # no second hold
    assert world.inventory.hold_of(hold.hold_id).qty == 5
    method, request = world.inventory.calls[-1]
    assert (method, request["add"], request["qty"]) == ("resize", 3, 0)  # grown by the add, not set to a total
    assert world.inventory.available("A") == 5
    assert world.line("A").qty == 5
    assert [(x.sku, x.qty) for x in view.lines] == [("A", 5)]


async def test_the_same_key_replays_the_first_answer_and_moves_no_stock(world):
    first = await world.carts.add(USER, "A", 2, "k1")
    calls = len(world.inventory.calls)
    world.clock.advance(30)

    barriers = len(world.pool.statements)
    again = await world.carts.add(USER, "A", 2, "k1")

    assert again.to_json() == first.to_json()
    assert len(world.inventory.calls) == calls  # inventory was not even asked
    # The replay waited for a synchronous standby to have what it replays (shop_runtime.idempotency).
    assert [q for q in world.pool.statements[barriers:] if "durability_barrier" in q] != []
    assert world.inventory.available("A") == 8
    assert world.line("A").qty == 2


async def test_the_same_key_with_another_request_is_refused(world):
    await world.carts.add(USER, "A", 2, "k1")

    await refused("IDEMPOTENCY_KEY_REUSED", world.carts.add(USER, "A", 3, "k1"))
    await refused("IDEMPOTENCY_KEY_REUSED", world.carts.add(USER, "B", 2, "k1"))
    await refused("IDEMPOTENCY_KEY_REUSED", world.carts.set_quantity(USER, "A", 0, "k1"))

    assert world.inventory.available("A") == 8
    assert world.line("A").qty == 2 and world.line("B") is None


async def test_keys_are_per_user(world):
    await world.carts.add(USER, "A", 2, "k1")

    view = await world.carts.add("bob", "A", 1, "k1")

    assert [(x.sku, x.qty) for x in view.lines] == [("A", 1)]
    assert world.inventory.available("A") == 7


# --- lost answers -----------------------------------------------------------------------------------

async def test_an_add_whose_inventory_answer_is_lost_leaves_the_line_and_the_view_shows_the_hold(world):
    await world.carts.add(USER, "A", 2, "k1")
    world.inventory.lose_next("resize", after=True)

    err = await refused("DEPENDENCY_UNAVAILABLE", world.carts.add(USER, "A", 3, "k2"))

    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert world.line("A").qty == 2  # the cart's change rolled back...
    assert world.inventory.hold_of(world.line("A").hold_id).qty == 5  # ...while inventory applied it
    assert world.repo.changes.keys() == {(USER, "k1")}  # the lost change's key is not kept
    assert await world.shown() == {"A": (5, False)}  # the hold is the truth


async def test_a_lost_add_retried_with_its_key_takes_effect_once(world):
    await world.carts.add(USER, "A", 2, "k1")
    world.inventory.lose_next("resize", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", world.carts.add(USER, "A", 3, "k2"))

    view = await world.carts.add(USER, "A", 3, "k2")

    assert [(x.sku, x.qty) for x in view.lines] == [("A", 5)]
    assert world.line("A").qty == 5
    assert world.inventory.available("A") == 5


async def test_a_later_add_with_a_new_key_adds_on_top_of_the_holds_quantity(world):
    await world.carts.add(USER, "A", 2, "k1")
    world.inventory.lose_next("resize", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", world.carts.add(USER, "A", 3, "k2"))

    view = await world.carts.add(USER, "A", 1, "k3")

    assert [(x.sku, x.qty) for x in view.lines] == [("A", 6)]  # 2 + 3 (lost answer) + 1, not 2 + 1
    assert world.line("A").qty == 6
    assert world.inventory.available("A") == 4


async def test_a_change_that_fails_after_writing_its_line_leaves_nothing_in_the_cart(world):
    await world.carts.add(USER, "A", 1, "k0")
    before = dict(world.repo.rows)
    world.inventory.lose_next("holds", after=False)  # the view after put_line cannot be read

    await refused("DEPENDENCY_UNAVAILABLE", world.carts.add(USER, "B", 1, "k1"))

    assert world.repo.rows == before and world.repo.changes.keys() == {(USER, "k0")}  # put_line rolled back
    (orphan,) = [h for h in world.inventory.holds_of("cart:alice") if h.sku == "B"]  # the hold stays
    view = await world.carts.add(USER, "B", 1, "k1")
    assert [(x.sku, x.qty) for x in view.lines] == [("A", 1), ("B", 1)]
    assert world.line("B").hold_id == orphan.hold_id  # the retry with the key found the same hold
    assert world.inventory.available("B") == 4


# --- limits and refusals --------------------------------------------------------------------------

async def test_a_line_holds_at_most_100_units(big):
    await big.carts.add(USER, "A", 100, "k1")

    err = await refused("QTY_LIMIT", big.carts.add(USER, "A", 1, "k2"))

    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.metadata == {"max": "100", "qty": "101"}
    assert big.inventory.hold_of(big.line("A").hold_id).qty == 100
    assert big.inventory.available("A") == 900
    assert big.repo.changes.keys() == {(USER, "k1")}  # a refusal is not kept


async def test_the_line_limit_is_decided_on_the_holds_quantity(big):
    await big.carts.add(USER, "A", 50, "k1")
    big.inventory.lose_next("resize", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", big.carts.add(USER, "A", 40, "k2"))  # the hold has 90, the line says 50

    err = await refused("QTY_LIMIT", big.carts.add(USER, "A", 20, "k3"))

    assert err.metadata == {"max": "100", "qty": "110"}
    assert big.inventory.hold_of(big.line("A").hold_id).qty == 90
    assert big.inventory.available("A") == 910


async def test_out_of_stock_leaves_everything_as_it_was(world):
    await world.carts.add(USER, "B", 3, "k1")
    before = world.line("B")

    err = await refused("OUT_OF_STOCK", world.carts.add(USER, "B", 3, "k2"))
    assert err.metadata["available"] == "2"
    await refused("OUT_OF_STOCK", world.carts.add(USER, "Z", 1, "k3"))

    assert world.line("B") == before and world.line("Z") is None
    assert [(h.sku, h.qty) for h in world.inventory.holds_of("cart:alice")] == [("B", 3)]
    assert world.inventory.available("B") == 2
    assert await world.shown() == {"B": (3, False)}
    assert world.repo.changes.keys() == {(USER, "k1")}
    world.inventory.on_hand["Z"] = 1  # restocked: the refused key may be used again
    await world.carts.add(USER, "Z", 1, "k3")
    assert world.line("Z").qty == 1


async def test_set_to_zero_releases_the_hold_and_removes_the_line(world):
    await world.carts.add(USER, "A", 3, "k1")
    hold_id = world.line("A").hold_id

    view = await world.carts.set_quantity(USER, "A", 0, "k2")

    assert view.lines == []
    assert world.line("A") is None
    assert world.inventory.hold_of(hold_id).state == RELEASED
    assert world.inventory.available("A") == 10
    again = await world.carts.set_quantity(USER, "A", 0, "k2")  # replayed: nothing more happens
    assert again.lines == [] and world.inventory.available("A") == 10


async def test_set_quantity_sets_the_hold_to_exactly_that(world):
    await world.carts.add(USER, "A", 3, "k1")

    await world.carts.set_quantity(USER, "A", 1, "k2")

    assert world.inventory.hold_of(world.line("A").hold_id).qty == 1
    assert world.inventory.available("A") == 9


# --- expiry ---------------------------------------------------------------------------------------

async def test_an_expired_line_shows_expired_and_a_new_add_holds_it_again(world):
    await world.carts.add(USER, "A", 2, "k1")
    old = world.line("A").hold_id
    world.clock.advance(TTL + 1)

    assert await world.shown() == {"A": (2, True)}
    assert world.inventory.available("A") == 10  # its units went back

    view = await world.carts.add(USER, "A", 1, "k2")

    new = world.line("A").hold_id
    assert new != old and world.inventory.hold_of(old).state == EXPIRED
    assert world.inventory.hold_of(new).qty == 3 and world.inventory.hold_of(new).state == ACTIVE
    assert [(x.sku, x.qty, x.expired) for x in view.lines] == [("A", 3, False)]
    assert world.inventory.available("A") == 7


async def test_an_add_to_an_expired_line_adds_on_top_of_what_its_hold_had(world):
    await world.carts.add(USER, "A", 2, "k1")
    world.inventory.lose_next("resize", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", world.carts.add(USER, "A", 3, "k2"))  # the hold has 5, the line says 2
    world.clock.advance(TTL + 1)
    assert await world.shown() == {"A": (5, True)}

    view = await world.carts.add(USER, "A", 1, "k3")

    assert [(x.sku, x.qty) for x in view.lines] == [("A", 6)]


async def test_an_add_is_not_refused_on_the_carts_stale_record(big):
    await big.carts.add(USER, "A", 5, "k1")
    big.inventory.lose_next("resize", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", big.carts.set_quantity(USER, "A", 2, "k2"))  # hold 2, line says 5
    assert await big.shown() == {"A": (2, False)}

    view = await big.carts.add(USER, "A", 96, "k3")  # 2 + 96 = 98 <= 100

    assert [(x.sku, x.qty) for x in view.lines] == [("A", 98)]


async def test_an_add_asks_the_catalog_once(world):
    await world.carts.add(USER, "A", 2, "k1")
    await world.carts.add(USER, "B", 1, "k2")

    assert world.catalog.asked == [["A"], ["A", "B"]]


async def test_an_add_that_takes_its_line_back_from_a_cut_off_checkout_asks_the_catalog_once(world):
    await world.carts.add(USER, "A", 2, "k1")
    hold_id = world.line("A").hold_id
    # A checkout moved the line's hold to its order, and was cut off before the cart recorded it.
    await world.inventory.extend([hold_id], "order:o1", "o1", 900, "checkout:o1")
    world.catalog.asked.clear()

    view = await world.carts.add(USER, "A", 1, "k2")  # decided under the user's lock (Carts._change_locked)

    assert [(x.sku, x.qty) for x in view.lines] == [("A", 3)]
    assert world.inventory.hold_of(hold_id).owner == "cart:alice"
    assert world.catalog.asked == [["A"]]


# --- checkout -------------------------------------------------------------------------------------

async def test_checkout_hands_over_the_holds_quantities_and_empties_the_cart(world):
    await world.carts.add(USER, "A", 2, "k1")
    await world.carts.add(USER, "B", 1, "k2")
    world.inventory.lose_next("resize", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", world.carts.add(USER, "A", 3, "k3"))  # hold 5, line record 2
    holds = {sku: world.line(sku).hold_id for sku in ("A", "B")}
    world.clock.advance(10)

    answer = await world.carts.checkout(USER, "order-1", 900)

    assert [(x.sku, x.qty, x.hold_id, x.name, x.price) for x in answer.lines] == [
        ("A", 5, holds["A"], "Apple", 1_000), ("B", 1, holds["B"], "Banana", 500)]
    assert all(x.reserved_until.ToDatetime(tzinfo=timezone.utc) == START + timedelta(seconds=910)
               for x in answer.lines)
    for hold_id in holds.values():
        hold = world.inventory.hold_of(hold_id)
        assert (hold.owner, hold.order_id, hold.state) == ("order:order-1", "order-1", ACTIVE)
    assert world.repo.rows == {}
    assert (await world.carts.view(USER)).lines == []
    assert world.inventory.available("A") == 5  # the units stay held, for the order


async def test_a_checkout_replayed_with_the_same_order_id_answers_the_same(world):
    await world.carts.add(USER, "A", 2, "k1")
    first = await world.carts.checkout(USER, "order-1", 900)
    world.clock.advance(60)
    await world.carts.add(USER, "B", 1, "k2")  # a new line after the hand-over is not the order's

    again = await world.carts.checkout(USER, "order-1", 900)
    replayed = await world.carts.checkout(USER, "order-1", 1, replay_only=True)

    assert again == first and replayed == first  # reserved_until included: the holds were not extended again
    assert [m for m, _ in world.inventory.calls].count("extend") == 1
    assert world.line("B").qty == 1
    await refused("INVALID_ARGUMENT", world.carts.checkout("bob", "order-1", 900))


async def test_a_checkout_whose_inventory_answer_is_lost_keeps_the_cart_and_completes_on_retry(world):
    await world.carts.add(USER, "A", 2, "k1")
    world.inventory.lose_next("extend", after=True)

    await refused("DEPENDENCY_UNAVAILABLE", world.carts.checkout(USER, "order-1", 900))

    assert world.line("A").qty == 2 and world.repo.checkouts == {}  # rolled back
    answer = await world.carts.checkout(USER, "order-1", 900)
    assert [(x.sku, x.qty) for x in answer.lines] == [("A", 2)]
    assert world.repo.rows == {}


async def test_replay_only_without_an_earlier_hand_over_is_checkout_not_found(world):
    await world.carts.add(USER, "A", 2, "k1")

    err = await refused("CHECKOUT_NOT_FOUND", world.carts.checkout(USER, "order-1", 900, replay_only=True))

    assert err.code == grpc.StatusCode.NOT_FOUND
    assert world.line("A").qty == 2 and world.repo.checkouts == {}
    assert world.inventory.hold_of(world.line("A").hold_id).owner == "cart:alice"


async def test_checkout_of_an_empty_cart_is_refused(world):
    await refused("CART_EMPTY", world.carts.checkout(USER, "order-1", 900))
    assert world.repo.checkouts == {}


async def test_checkout_holds_an_expired_line_again(world):
    await world.carts.add(USER, "A", 2, "k1")
    old = world.line("A").hold_id
    world.clock.advance(TTL + 1)

    answer = await world.carts.checkout(USER, "order-1", 900)

    (line,) = answer.lines
    assert line.qty == 2 and line.hold_id != old
    assert world.inventory.hold_of(line.hold_id).state == ACTIVE
    assert world.inventory.available("A") == 8


async def test_checkout_hands_over_the_holds_not_the_records(world):
    """The response messages carry the hold's own quantity even where the cart's record differs."""
    await world.carts.add(USER, "A", 4, "k1")
    world.inventory.lose_next("resize", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", world.carts.set_quantity(USER, "A", 1, "k2"))
    assert world.line("A").qty == 4

    answer = await world.carts.checkout(USER, "order-1", 900)

    assert isinstance(answer, cart_pb2.CheckoutCartResponse)
    assert [(x.sku, x.qty) for x in answer.lines] == [("A", 1)]


# --- the reconciler -------------------------------------------------------------------------------

async def test_the_reconciler_releases_a_cart_hold_no_line_refers_to_and_leaves_the_others(world):
    world.inventory.lose_next("hold", after=True)
    await refused("DEPENDENCY_UNAVAILABLE", world.carts.add(USER, "A", 2, "k1"))  # held, never recorded
    (orphan,) = world.inventory.holds_of("cart:alice")
    await world.carts.add(USER, "B", 1, "k2")
    kept = world.line("B").hold_id
    world.clock.advance(30)

    assert await world.carts.reconcile() == 0  # too young: a change may still be under way

    world.clock.advance(31)
    assert await world.carts.reconcile() == 1
    assert world.inventory.hold_of(orphan.hold_id).state == RELEASED
    assert world.inventory.hold_of(kept).state == ACTIVE
    assert world.inventory.available("A") == 10 and world.inventory.available("B") == 4
    assert await world.shown() == {"B": (1, False)}
    assert await world.carts.reconcile() == 0  # nothing left to repair


async def test_the_reconciler_leaves_holds_that_are_not_carts(world):
    await world.inventory.hold("order:x", {"A": 1}, 900, "")
    world.clock.advance(120)

    assert await world.carts.reconcile() == 0
    assert world.inventory.available("A") == 9


# --- prices held with the units ---------------------------------------------------------------------

SALE = "5a1e0000-0000-4000-8000-000000000001"


def priced(view) -> list[tuple[str, int, int, int, str]]:
    """(sku, price, qty, subtotal, campaign) of each line of a view."""
    return [(x.sku, x.price, x.qty, x.subtotal, x.campaign_id) for x in view.lines]


async def test_a_line_shows_the_price_its_units_were_held_at_not_the_catalogs_current(world):
    await world.carts.add(USER, "A", 2, "k1")
    assert world.inventory.hold_of(world.line("A").hold_id).price == 1_000
    world.catalog.by_sku["A"] = Product("Apple (new name)", 1_500)  # an admin changes the price, and the name

    view = await world.carts.view(USER)

    assert priced(view) == [("A", 1_000, 2, 2_000, "")]
    assert view.total == 2_000
    assert view.lines[0].name == "Apple (new name)"  # names still come from the catalog
    message = cart_servicer.cart_pb(view)
    assert (message.items[0].price, message.items[0].subtotal, message.items[0].campaign_id, message.total) == (
        1_000, 2_000, "", 2_000)


async def test_a_line_does_not_grow_at_an_old_price_and_an_expired_one_held_again_takes_the_price_of_now(world):
    await world.carts.add(USER, "A", 2, "k1")
    world.catalog.by_sku["A"] = Product("Apple", 1_500)

    # One line, one price: the units it holds keep theirs, more units are not sold at the old one.
    err = await refused("PRICE_CHANGED", world.carts.add(USER, "A", 1, "k2"))
    assert int(err.metadata["price"]) == 1_500
    assert priced(await world.carts.view(USER)) == [("A", 1_000, 2, 2_000, "")]
    # Shrinking is fine: it sells nothing.
    assert priced(await world.carts.set_quantity(USER, "A", 1, "k2b")) == [("A", 1_000, 1, 1_000, "")]

    world.clock.advance(TTL + 1)
    again = await world.carts.add(USER, "A", 1, "k3")
    assert priced(again) == [("A", 1_500, 2, 3_000, "")]  # a new hold of the line's units, at the price of now
    assert world.line("A").price == 1_500


async def test_a_hold_made_before_prices_were_held_is_shown_at_the_catalogs_price(world):
    await world.carts.add(USER, "A", 2, "k1")
    world.inventory.stored[world.line("A").hold_id].price = 0  # as a hold from before migration 0005
    world.catalog.by_sku["A"] = Product("Apple", 1_200)

    assert priced(await world.carts.view(USER)) == [("A", 1_200, 2, 2_400, "")]
    (line,) = (await world.carts.checkout(USER, "order-1", 900)).lines
    assert (line.price, line.campaign_id) == (1_200, "")


async def test_an_add_gives_inventory_the_catalogs_price_and_the_expected_one(world):
    await world.carts.add(USER, "A", 2, "k1", expected_price=1_000)
    method, request = world.inventory.calls[-1]
    assert (method, request["prices"], request["expected_prices"]) == ("hold", {"A": 1_000}, {"A": 1_000})

    await world.carts.add(USER, "A", 1, "k2", expected_price=1_000)
    method, request = world.inventory.calls[-1]
    assert (method, request["expected_price"]) == ("resize", 1_000)

    await world.carts.set_quantity(USER, "B", 2, "k3")  # no expectation: any price
    method, request = world.inventory.calls[-1]
    assert (method, request["prices"], request["expected_prices"]) == ("hold", {"B": 500}, {})


async def test_an_unexpected_price_is_price_changed_and_changes_nothing(world):
    await world.carts.add(USER, "A", 2, "k1")
    before = world.line("A")

    err = await refused("PRICE_CHANGED", world.carts.add(USER, "A", 1, "k2", expected_price=900))  # growing
    assert err.code == grpc.StatusCode.ABORTED and err.metadata["price"] == "1000"
    err = await refused("PRICE_CHANGED", world.carts.set_quantity(USER, "A", 5, "k3", expected_price=900))
    assert err.metadata["price"] == "1000"
    err = await refused("PRICE_CHANGED", world.carts.add(USER, "B", 1, "k4", expected_price=450))  # a new line
    assert err.metadata["price"] == "500"

    assert world.line("A") == before and world.line("B") is None
    assert [(h.sku, h.qty) for h in world.inventory.holds_of("cart:alice")] == [("A", 2)]
    assert world.inventory.available("B") == 5
    assert world.repo.changes.keys() == {(USER, "k1")}


@pytest.mark.parametrize("expected", [-1, 2_000_000_001])
async def test_an_expected_price_out_of_range_is_invalid_argument_naming_it(world, expected):
    for call in (world.carts.add(USER, "A", 1, "k1", expected_price=expected),
                 world.carts.set_quantity(USER, "A", 1, "k1", expected_price=expected)):
        err = await refused("INVALID_ARGUMENT", call)
        assert err.metadata["field"] == "expectedPrice"
    assert world.inventory.calls == [] and world.repo.rows == {}


async def test_the_same_key_with_another_expected_price_is_refused(world):
    first = await world.carts.add(USER, "A", 2, "k1", expected_price=1_000)

    await refused("IDEMPOTENCY_KEY_REUSED", world.carts.add(USER, "A", 2, "k1"))
    await refused("IDEMPOTENCY_KEY_REUSED", world.carts.add(USER, "A", 2, "k1", expected_price=999))
    again = await world.carts.add(USER, "A", 2, "k1", expected_price=1_000)
    assert again.to_json() == first.to_json() and world.line("A").qty == 2
    await world.carts.set_quantity(USER, "A", 3, "k2")
    await refused("IDEMPOTENCY_KEY_REUSED", world.carts.set_quantity(USER, "A", 3, "k2", expected_price=1_000))


async def test_an_add_in_a_live_sale_holds_from_its_quota_at_the_sale_price(world):
    world.inventory.start_sale("A", SALE, 700, quota=3)

    view = await world.carts.add(USER, "A", 2, "k1")

    assert priced(view) == [("A", 700, 2, 1_400, SALE)]
    assert view.total == 1_400
    assert cart_servicer.cart_pb(view).items[0].campaign_id == SALE
    assert world.inventory.remaining("A") == 1 and world.inventory.available("A") == 7
    # A stored answer replays with its campaign.
    assert priced(await world.carts.add(USER, "A", 2, "k1")) == priced(view)


async def test_a_sale_sold_out_refuses_the_add_with_what_is_left_and_changes_nothing(world):
    world.inventory.start_sale("A", SALE, 700, quota=3)
    await world.carts.add(USER, "A", 2, "k1")
    before = world.line("A")

    err = await refused("SALE_SOLD_OUT", world.carts.add(USER, "A", 2, "k2"))
    assert err.code == grpc.StatusCode.ABORTED
    assert (err.metadata["remaining"], err.metadata["available"]) == ("1", "7")
    assert world.line("A") == before and world.inventory.hold_of(before.hold_id).qty == 2
    await refused("SALE_SOLD_OUT", world.carts.add("bob", "A", 2, "b1"))
    assert world.line("A", "bob") is None and world.inventory.holds_of("cart:bob") == []

    # Bob says he wants the regular price: regular stock, at the regular price.
    view = await world.carts.add("bob", "A", 2, "b2", expected_price=1_000)
    assert priced(view) == [("A", 1_000, 2, 2_000, "")]
    # Alice's sale line has one price: growing it at the regular price is refused.
    err = await refused("PRICE_CHANGED", world.carts.add(USER, "A", 1, "k3", expected_price=1_000))
    assert err.metadata["price"] == "700"


async def test_a_sale_line_keeps_its_price_after_the_sale_ends_but_cannot_grow(world):
    world.inventory.start_sale("A", SALE, 700, quota=3)
    await world.carts.add(USER, "A", 2, "k1")
    world.inventory.end_sale("A")
    before = world.line("A")

    assert priced(await world.carts.view(USER)) == [("A", 700, 2, 1_400, SALE)]
    await refused("SALE_ENDED", world.carts.add(USER, "A", 1, "k2"))
    assert world.line("A") == before
    shrunk = await world.carts.set_quantity(USER, "A", 1, "k3")  # shrinking gives units back, at the same price
    assert priced(shrunk) == [("A", 700, 1, 700, SALE)]


async def test_the_cap_on_the_total_counts_held_units_at_their_held_prices(big):
    await big.carts.add(USER, "A", 99, "k1")  # 99 x 1,000
    big.catalog.by_sku["A"] = Product("Apple", 30_000_000)  # at this price the line would be 2,970,000,000

    assert (await big.carts.view(USER)).total == 99_000  # not refused: its units are held at 1,000
    big.inventory.on_hand["B"] = 10
    view = await big.carts.add(USER, "B", 2, "k2")  # checked with A at its held price
    assert view.total == 99_000 + 1_000
    # Units to be held anew are checked at the catalog's price before they are held: nothing is held.
    big.clock.advance(TTL + 1)
    hold_id = big.line("A").hold_id
    await refused("TOTAL_LIMIT", big.carts.add(USER, "A", 1, "k3"))
    assert big.line("A").hold_id == hold_id and big.inventory.available("A") == 1_000


async def test_checkout_hands_over_each_holds_price_and_campaign(world):
    world.inventory.start_sale("A", SALE, 700, quota=3)
    await world.carts.add(USER, "A", 2, "k1")
    await world.carts.add(USER, "B", 1, "k2")
    world.catalog.by_sku["A"] = Product("Apple", 1_500)
    world.catalog.by_sku["B"] = Product("Banana", 800)

    answer = await world.carts.checkout(USER, "order-1", 900)

    assert [(x.sku, x.price, x.qty, x.campaign_id) for x in answer.lines] == [("A", 700, 2, SALE), ("B", 500, 1, "")]
    assert [(x.price, x.campaign_id) for x in handed_lines(answer)] == [(700, SALE), (500, "")]


async def test_checkout_holds_an_expired_sale_line_again_from_its_quota_at_its_price(world):
    world.inventory.start_sale("A", SALE, 700, quota=3)
    await world.carts.add(USER, "A", 2, "k1")
    world.clock.advance(TTL + 1)

    (line,) = (await world.carts.checkout(USER, "order-1", 900)).lines

    assert (line.price, line.campaign_id, line.qty) == (700, SALE, 2)
    assert world.inventory.remaining("A") == 1


async def test_checkout_of_an_expired_sale_line_after_the_sale_is_sale_ended_and_changes_nothing(world):
    world.inventory.start_sale("A", SALE, 700, quota=3)
    await world.carts.add(USER, "A", 2, "k1")
    await world.carts.add(USER, "B", 1, "k2")
    world.clock.advance(TTL + 1)
    world.inventory.end_sale("A")
    lines = dict(world.repo.rows)

    err = await refused("SALE_ENDED", world.carts.checkout(USER, "order-1", 900))

    assert err.code == grpc.StatusCode.ABORTED and "A" in err.metadata["skus"]
    assert world.repo.rows == lines and world.repo.checkouts == {}
    assert all(h.owner == "cart:alice" for h in world.inventory.holds_of("cart:alice"))
    assert world.inventory.holds_of("order:order-1") == []


async def test_a_lost_add_resent_after_a_price_change_holds_once_at_the_new_price(world):
    world.inventory.lose_next("hold", after=True)  # the hold is made at 1,000; its answer never comes back
    await refused("DEPENDENCY_UNAVAILABLE", world.carts.add(USER, "A", 2, "k1"))
    world.catalog.by_sku["A"] = Product("Apple", 1_200)

    view = await world.carts.add(USER, "A", 2, "k1")  # the shopper's resend, same key: not a reused key

    assert priced(view) == [("A", 1_200, 2, 2_400, "")]
    world.clock.advance(61)
    assert await world.carts.reconcile() == 1  # the first try's hold, which no line names, goes back
    assert world.inventory.available("A") == 8
    assert priced(await world.carts.add(USER, "A", 2, "k1")) == priced(view)  # and the key still replays
