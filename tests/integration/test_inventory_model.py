"""A model-based test: random sequences of inventory calls against the real service and database, checked against a model.

The server is the real inventory gRPC server on real Postgres, started in this process so that the
test owns its clock: advancing the clock expires holds without waiting.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
import psycopg
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule, run_state_machine_as_test

from inventory_svc.audit import audit
from inventory_svc.server import SPEC, InventorySettings, create_server
from inventory_svc.service import Inventory
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from tests.clock import ManualClock
from shop_runtime.config import ServiceSettings
from shop_runtime.db import migrate, open_pool
from shop_runtime.errors import error_info
from shop_runtime.server import Deps

STATES = {
    inventory_pb2.HOLD_STATE_ACTIVE: "ACTIVE",
    inventory_pb2.HOLD_STATE_COMMITTED: "COMMITTED",
    inventory_pb2.HOLD_STATE_RELEASED: "RELEASED",
    inventory_pb2.HOLD_STATE_EXPIRED: "EXPIRED",
}


class InProcessInventory:
    """The real inventory server on its own event loop thread, with a manual clock and no sweeper task."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.clock = ManualClock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.app.port}")
        self.stub = inventory_pb2_grpc.InventoryServiceStub(self.channel)

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _start(self):
        await migrate(self.dsn, SPEC.schema, SPEC.migrations)
        self.pool = await open_pool(self.dsn, max_size=4)
        settings_ = ServiceSettings(service_name="inventory", database_url=self.dsn, grpc_host="127.0.0.1",
                                    grpc_port=0, advertise_address="127.0.0.1", consul_host="127.0.0.1",
                                    consul_port=1, shutdown_grace_seconds=1, check_interval="1s", pool_max_size=4)
        self.app = create_server(settings_, Deps(pool=self.pool, clock=self.clock), InventorySettings(0))
        await self.app.server.start()
        # A second "replica" of the service layer on the same pool and clock, for the sweeper rule.
        self.sweeper = Inventory(self.pool, self.clock)

    async def _audit(self):
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            return await audit(conn)

    def audit(self) -> list[str]:
        return self.call(self._audit())

    def stop(self):
        self.channel.close()
        self.call(self.app.server.stop(0))
        self.call(self.pool.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


SERVER: InProcessInventory | None = None


@dataclass
class ModelHold:
    sku: str
    qty: int
    state: str
    expires_at: datetime
    # The hold that holds an expired hold's units again for its order, once ExtendHolds did so.
    replaced_by: str | None = None
    # The price its units were held at, and the campaign whose quota they came from (None: regular stock).
    price: int = 0
    campaign: str | None = None


@dataclass
class ModelCampaign:
    sku: str
    quota: int
    starts_at: datetime
    ends_at: datetime
    # Cancelled before it started: it never sells and frees its window.
    cancelled: bool = False


# Every line is added at the regular price; a live campaign sells at the sale price.
PRICE, SALE = 10, 6


def reason(err: grpc.RpcError) -> str:
    info = error_info(err)
    return info.reason if info else f"{err.code().name}: {err.details()}"


class InventoryMachine(RuleBasedStateMachine):
    """The model: on hand per SKU, every hold and every campaign; held units are the active, unexpired holds;
    a campaign not ended has set aside its quota less the units of its holds active or sold (every unit that
    comes back while it runs goes back to it), one ended nothing."""

    holds = Bundle("holds")
    campaigns = Bundle("campaigns")

    def __init__(self):
        super().__init__()
        self.server = SERVER
        self.stub = SERVER.stub
        prefix = uuid.uuid4().hex[:8]
        self.skus = [f"{prefix}-{i}" for i in range(3)]
        self.on_hand = {}
        self.model: dict[str, ModelHold] = {}
        self.campaigns_of: dict[str, ModelCampaign] = {}
        self.last_write = None
        for sku in self.skus:
            self.stub.SetStock(inventory_pb2.SetStockRequest(sku=sku, on_hand=5))
            self.on_hand[sku] = 5

    # --- the model ---

    def now(self) -> datetime:
        return self.server.clock.now()

    def state(self, hold_id: str) -> str:
        h = self.model[hold_id]
        return "EXPIRED" if h.state == "ACTIVE" and h.expires_at <= self.now() else h.state

    def reserved(self, sku: str) -> int:
        return sum(h.qty for i, h in self.model.items() if h.sku == sku and self.state(i) == "ACTIVE")

    def ended(self, c: ModelCampaign) -> bool:
        return c.cancelled or c.ends_at <= self.now()

    def live(self, sku: str) -> str | None:
        """The campaign of `sku` live now, if any."""
        return next((i for i, c in self.campaigns_of.items()
                     if c.sku == sku and not c.cancelled and c.starts_at <= self.now() < c.ends_at), None)

    def remaining(self, campaign_id: str) -> int:
        c = self.campaigns_of[campaign_id]
        if self.ended(c):
            return 0
        return c.quota - sum(h.qty for i, h in self.model.items()
                             if h.campaign == campaign_id and self.state(i) in ("ACTIVE", "COMMITTED"))

    def set_aside(self, sku: str) -> int:
        return sum(self.remaining(i) for i, c in self.campaigns_of.items() if c.sku == sku)

    def available(self, sku: str) -> int:
        return self.on_hand[sku] - self.reserved(sku) - self.set_aside(sku)

    def write(self, method, request):
        """Sends a write with a fresh idempotency key; remembers it for the replay rule when it succeeds."""
        request.idempotency_key = uuid.uuid4().hex
        answer = method(request)
        self.last_write = (method, request, answer)
        return answer

    # --- the rules ---

    @rule(target=holds, i=st.integers(0, 2), qty=st.integers(1, 4), ttl=st.integers(1, 30), regular=st.booleans())
    def hold(self, i, qty, ttl, regular):
        sku = self.skus[i]
        campaign = None if regular else self.live(sku)
        if campaign is not None:
            expect_ok, refusal = qty <= self.remaining(campaign), "SALE_SOLD_OUT"
        else:
            expect_ok, refusal = qty <= self.available(sku), "OUT_OF_STOCK"
        request = inventory_pb2.CreateHoldsRequest(
            owner=f"cart:{i}", ttl_seconds=ttl,
            lines=[inventory_pb2.HoldLine(sku=sku, qty=qty, price=PRICE, expected_price=PRICE if regular else 0)])
        try:
            (h,) = self.write(self.stub.CreateHolds, request).holds
        except grpc.RpcError as err:
            assert not expect_ok and reason(err) == refusal, reason(err)
            return multiple()
        assert expect_ok, f"held {qty} of {sku} with {self.available(sku)} available"
        expires_at = self.now() + timedelta(seconds=ttl)
        assert h.expires_at.ToDatetime().replace(tzinfo=expires_at.tzinfo) == expires_at
        price = PRICE if campaign is None else SALE
        event("held from a live quota" if campaign else "held from regular stock")
        assert (h.price, h.campaign_id) == (price, campaign or "")
        self.model[h.hold_id] = ModelHold(sku, qty, "ACTIVE", expires_at, price=price, campaign=campaign)
        return h.hold_id

    @rule(hold_id=holds, qty=st.integers(1, 6))
    def resize(self, hold_id, qty):
        h, state = self.model[hold_id], self.state(hold_id)
        request = inventory_pb2.ResizeHoldRequest(hold_id=hold_id, qty=qty)
        grow = qty - h.qty
        if h.campaign is None:
            expected = None if grow <= self.available(h.sku) else "OUT_OF_STOCK"
        elif grow <= 0:
            expected = None
        elif self.live(h.sku) != h.campaign:
            expected = "SALE_ENDED"
        else:
            expected = None if grow <= self.remaining(h.campaign) else "SALE_SOLD_OUT"
        if state != "ACTIVE":
            expected = "HOLD_NOT_ACTIVE"
        try:
            answer = self.write(self.stub.ResizeHold, request)
        except grpc.RpcError as err:
            assert expected is not None and reason(err) == expected, (reason(err), expected)
            event(f"resize refused: {expected}")
            self._settle(hold_id)
            return
        assert expected is None, expected
        assert (answer.hold.price, answer.hold.campaign_id) == (h.price, h.campaign or "")
        assert answer.hold.qty == qty
        h.qty = qty

    def _settle(self, hold_id):
        """A refused write still reclaimed the SKU's expired holds: the model follows."""
        sku = self.model[hold_id].sku
        for i, h in self.model.items():
            if h.sku == sku and self.state(i) == "EXPIRED":
                h.state = "EXPIRED"

    def _end(self, hold_id, method, request, new_state):
        h, state = self.model[hold_id], self.state(hold_id)
        try:
            (ended,) = self.write(method, request).holds
        except grpc.RpcError as err:
            assert state != "ACTIVE" and reason(err) == "HOLD_NOT_ACTIVE", reason(err)
            return
        assert state == "ACTIVE", f"a {state} hold ended again"
        assert STATES[ended.state] == new_state
        h.state = new_state
        if new_state == "COMMITTED":
            self.on_hand[h.sku] -= h.qty

    @rule(hold_id=holds)
    def release(self, hold_id):
        self._end(hold_id, self.stub.ReleaseHolds, inventory_pb2.ReleaseHoldsRequest(hold_ids=[hold_id]), "RELEASED")

    @rule(hold_id=holds)
    def commit(self, hold_id):
        self._end(hold_id, self.stub.CommitHolds, inventory_pb2.CommitHoldsRequest(hold_ids=[hold_id]), "COMMITTED")

    @rule(target=holds, hold_id=holds, ttl=st.integers(1, 30))
    def extend(self, hold_id, ttl):
        named = hold_id
        while self.model[hold_id].replaced_by:  # an expired hold held again stands for its replacement
            hold_id = self.model[hold_id].replaced_by
        h, state = self.model[hold_id], self.state(hold_id)
        request = inventory_pb2.ExtendHoldsRequest(hold_ids=[hold_id], owner="order:o", order_id="o", ttl_seconds=ttl)
        refusal = None
        if state in ("COMMITTED", "RELEASED"):
            refusal = "HOLD_NOT_ACTIVE"
        elif state == "EXPIRED" and h.campaign is None and h.qty > self.available(h.sku):
            refusal = "OUT_OF_STOCK"
        elif state == "EXPIRED" and h.campaign is not None:
            if self.live(h.sku) != h.campaign:
                refusal = "SALE_ENDED"
            elif h.qty > self.remaining(h.campaign):
                refusal = "SALE_SOLD_OUT"
        try:
            (new,) = self.write(self.stub.ExtendHolds, request).holds
        except grpc.RpcError as err:
            assert refusal is not None and reason(err) == refusal, (reason(err), refusal)
            event(f"extend refused: {refusal}")
            return multiple()
        assert refusal is None, refusal
        assert (new.price, new.campaign_id) == (h.price, h.campaign or "")
        expires_at = self.now() + timedelta(seconds=ttl)
        if state == "ACTIVE":
            assert new.hold_id == hold_id
            h.expires_at = expires_at
            return multiple()
        assert new.hold_id not in (hold_id, named), "an expired hold must not come back to life"
        h.state = "EXPIRED"
        h.replaced_by = new.hold_id
        self.model[new.hold_id] = ModelHold(h.sku, h.qty, "ACTIVE", expires_at, price=h.price, campaign=h.campaign)
        return new.hold_id

    @rule(i=st.integers(0, 2), on_hand=st.integers(0, 12))
    def set_stock(self, i, on_hand):
        sku = self.skus[i]
        try:
            level = self.stub.SetStock(inventory_pb2.SetStockRequest(sku=sku, on_hand=on_hand),
                                       metadata=[("idempotency-key", uuid.uuid4().hex)])
        except grpc.RpcError as err:
            assert on_hand < self.reserved(sku) + self.set_aside(sku) and reason(err) == "BELOW_RESERVED", reason(err)
            return
        assert on_hand >= self.reserved(sku) + self.set_aside(sku)
        assert (level.on_hand, level.reserved, level.set_aside) == (on_hand, self.reserved(sku), self.set_aside(sku))
        self.on_hand[sku] = on_hand

    @rule(target=campaigns, i=st.integers(0, 2), quota=st.integers(1, 6), starts_in=st.sampled_from([0, 5, 15]),
          lasts=st.integers(1, 30))
    def create_campaign(self, i, quota, starts_in, lasts):
        sku = self.skus[i]
        starts_at = self.now() + timedelta(seconds=starts_in)
        ends_at = starts_at + timedelta(seconds=lasts)
        overlap = any(c.sku == sku and not c.cancelled and c.starts_at < ends_at and starts_at < c.ends_at
                      for c in self.campaigns_of.values())
        refusal = "CAMPAIGN_OVERLAP" if overlap else "OUT_OF_STOCK" if quota > self.available(sku) else None
        request = inventory_pb2.CreateCampaignRequest(
            name="model", items=[inventory_pb2.NewCampaignItem(sku=sku, sale_price=SALE, quota=quota)])
        request.starts_at.FromDatetime(starts_at)
        request.ends_at.FromDatetime(ends_at)
        try:
            campaign = self.stub.CreateCampaign(request)
        except grpc.RpcError as err:
            assert refusal is not None and reason(err) == refusal, (reason(err), refusal)
            return multiple()
        assert refusal is None, refusal
        self.campaigns_of[campaign.campaign_id] = ModelCampaign(sku, quota, starts_at, ends_at)
        return campaign.campaign_id

    @rule(campaign_id=campaigns)
    def cancel_campaign(self, campaign_id):
        c = self.campaigns_of[campaign_id]
        self.stub.CancelCampaign(inventory_pb2.CancelCampaignRequest(campaign_id=campaign_id))
        if c.cancelled or c.ends_at <= self.now():
            return
        if self.now() <= c.starts_at:
            c.cancelled = True
        else:
            c.ends_at = self.now()

    @rule(seconds=st.integers(1, 20))
    def advance_clock(self, seconds):
        self.server.clock.advance(seconds)

    @rule()
    def sweep(self):
        self.server.call(self.server.sweeper.sweep_once())
        for i in self.model:
            if self.state(i) == "EXPIRED":
                self.model[i].state = "EXPIRED"

    @rule()
    def replay_last_write(self):
        if self.last_write is None:
            return
        method, request, answer = self.last_write
        assert method(request) == answer, "a replayed key must answer as the first call did"

    # --- what must hold after every step ---

    @invariant()
    def figures_match_the_model(self):
        levels = self.stub.GetAvailability(inventory_pb2.GetAvailabilityRequest(skus=self.skus)).items
        for level in levels:
            want = (self.on_hand[level.sku], self.reserved(level.sku), self.set_aside(level.sku),
                    self.available(level.sku))
            assert (level.on_hand, level.reserved, level.set_aside, level.available) == want, level.sku
            assert level.available >= 0

    @invariant()
    def campaign_figures_match_the_model(self):
        if not self.campaigns_of:
            return
        got = self.stub.GetCampaigns(inventory_pb2.GetCampaignsRequest(campaign_ids=list(self.campaigns_of)))
        for campaign in got.campaigns:
            (item,) = campaign.items
            assert item.remaining == self.remaining(campaign.campaign_id), campaign.campaign_id
            assert item.quota == item.remaining + item.held + item.sold + item.returned

    @invariant()
    def hold_states_match_the_model(self):
        if not self.model:
            return
        got = self.stub.GetHolds(inventory_pb2.GetHoldsRequest(hold_ids=list(self.model))).holds
        assert {h.hold_id: STATES[h.state] for h in got} == {i: self.state(i) for i in self.model}

    @invariant()
    def audit_is_clean(self):
        assert self.server.audit() == []


class CampaignMachine(InventoryMachine):
    """The same model, starting with a campaign live on the first SKU and one starting in 5 s on the second, so the
    random steps buy from quotas, cross their ends and come back to them from the start."""

    def __init__(self):
        super().__init__()
        for i, starts_in, lasts in ((0, 0, 20), (1, 5, 15)):
            self.create_campaign(i, 3, starts_in, lasts)


@pytest.fixture(scope="module")
def server(pg_admin_dsn):
    from devstack.postgres import create_database, dsn_for

    global SERVER
    SERVER = InProcessInventory(dsn_for(pg_admin_dsn, create_database(pg_admin_dsn)))
    yield SERVER
    SERVER.stop()
    SERVER = None


def test_inventory_behaves_like_its_model(server):
    run_state_machine_as_test(
        InventoryMachine,
        settings=settings(max_examples=40, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )


def test_campaigns_behave_like_their_model(server):
    run_state_machine_as_test(
        CampaignMachine,
        settings=settings(max_examples=25, stateful_step_count=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )


def test_a_hold_stops_counting_at_the_instant_of_its_expiry(server):
    """The boundary the model's random clock rarely lands on: expires_at == now is expired, for reads and writes."""
    stub, clock = server.stub, server.clock
    sku = f"edge-{uuid.uuid4().hex[:8]}"
    stub.SetStock(inventory_pb2.SetStockRequest(sku=sku, on_hand=2))
    (h,) = stub.CreateHolds(inventory_pb2.CreateHoldsRequest(
        owner="cart:edge", lines=[inventory_pb2.HoldLine(sku=sku, qty=2)], ttl_seconds=5)).holds
    clock.advance(4.999)
    (level,) = stub.GetAvailability(inventory_pb2.GetAvailabilityRequest(skus=[sku])).items
    assert level.available == 0
    clock.advance(0.001)
    (level,) = stub.GetAvailability(inventory_pb2.GetAvailabilityRequest(skus=[sku])).items
    assert (level.reserved, level.available) == (0, 2)
    (got,) = stub.GetHolds(inventory_pb2.GetHoldsRequest(hold_ids=[h.hold_id])).holds
    assert got.state == inventory_pb2.HOLD_STATE_EXPIRED
    with pytest.raises(grpc.RpcError) as caught:
        stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[h.hold_id]))
    assert reason(caught.value) == "HOLD_NOT_ACTIVE"
