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
from hypothesis import HealthCheck, settings
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


def reason(err: grpc.RpcError) -> str:
    info = error_info(err)
    return info.reason if info else f"{err.code().name}: {err.details()}"


class InventoryMachine(RuleBasedStateMachine):
    """The model: on hand per SKU and every hold; held units are the active, unexpired holds."""

    holds = Bundle("holds")

    def __init__(self):
        super().__init__()
        self.server = SERVER
        self.stub = SERVER.stub
        prefix = uuid.uuid4().hex[:8]
        self.skus = [f"{prefix}-{i}" for i in range(3)]
        self.on_hand = {}
        self.model: dict[str, ModelHold] = {}
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

    def available(self, sku: str) -> int:
        return self.on_hand[sku] - self.reserved(sku)

    def write(self, method, request):
        """Sends a write with a fresh idempotency key; remembers it for the replay rule when it succeeds."""
        request.idempotency_key = uuid.uuid4().hex
        answer = method(request)
        self.last_write = (method, request, answer)
        return answer

    # --- the rules ---

    @rule(target=holds, i=st.integers(0, 2), qty=st.integers(1, 4), ttl=st.integers(1, 30))
    def hold(self, i, qty, ttl):
        sku = self.skus[i]
        expect_ok = qty <= self.available(sku)
        request = inventory_pb2.CreateHoldsRequest(owner=f"cart:{i}", lines=[inventory_pb2.HoldLine(sku=sku, qty=qty)],
                                                   ttl_seconds=ttl)
        try:
            (h,) = self.write(self.stub.CreateHolds, request).holds
        except grpc.RpcError as err:
            assert not expect_ok and reason(err) == "OUT_OF_STOCK", reason(err)
            return multiple()
        assert expect_ok, f"held {qty} of {sku} with {self.available(sku)} available"
        expires_at = self.now() + timedelta(seconds=ttl)
        assert h.expires_at.ToDatetime().replace(tzinfo=expires_at.tzinfo) == expires_at
        self.model[h.hold_id] = ModelHold(sku, qty, "ACTIVE", expires_at)
        return h.hold_id

    @rule(hold_id=holds, qty=st.integers(1, 6))
    def resize(self, hold_id, qty):
        h, state = self.model[hold_id], self.state(hold_id)
        request = inventory_pb2.ResizeHoldRequest(hold_id=hold_id, qty=qty)
        try:
            answer = self.write(self.stub.ResizeHold, request)
        except grpc.RpcError as err:
            if state != "ACTIVE":
                assert reason(err) == "HOLD_NOT_ACTIVE"
            else:
                assert qty - h.qty > self.available(h.sku) and reason(err) == "OUT_OF_STOCK", reason(err)
            self._settle(hold_id)
            return
        assert state == "ACTIVE" and qty - h.qty <= self.available(h.sku)
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
        rehold_ok = state == "EXPIRED" and h.qty <= self.available(h.sku)
        try:
            (new,) = self.write(self.stub.ExtendHolds, request).holds
        except grpc.RpcError as err:
            if state in ("COMMITTED", "RELEASED"):
                assert reason(err) == "HOLD_NOT_ACTIVE"
            else:
                assert state == "EXPIRED" and not rehold_ok and reason(err) == "OUT_OF_STOCK", reason(err)
            return multiple()
        assert state == "ACTIVE" or rehold_ok
        expires_at = self.now() + timedelta(seconds=ttl)
        if state == "ACTIVE":
            assert new.hold_id == hold_id
            h.expires_at = expires_at
            return multiple()
        assert new.hold_id not in (hold_id, named), "an expired hold must not come back to life"
        h.state = "EXPIRED"
        h.replaced_by = new.hold_id
        self.model[new.hold_id] = ModelHold(h.sku, h.qty, "ACTIVE", expires_at)
        return new.hold_id

    @rule(i=st.integers(0, 2), on_hand=st.integers(0, 12))
    def set_stock(self, i, on_hand):
        sku = self.skus[i]
        try:
            level = self.stub.SetStock(inventory_pb2.SetStockRequest(sku=sku, on_hand=on_hand),
                                       metadata=[("idempotency-key", uuid.uuid4().hex)])
        except grpc.RpcError as err:
            assert on_hand < self.reserved(sku) and reason(err) == "BELOW_RESERVED", reason(err)
            return
        assert on_hand >= self.reserved(sku)
        assert (level.on_hand, level.reserved) == (on_hand, self.reserved(sku))
        self.on_hand[sku] = on_hand

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
            want = (self.on_hand[level.sku], self.reserved(level.sku), self.available(level.sku))
            assert (level.on_hand, level.reserved, level.available) == want, level.sku
            assert level.available >= 0

    @invariant()
    def hold_states_match_the_model(self):
        if not self.model:
            return
        got = self.stub.GetHolds(inventory_pb2.GetHoldsRequest(hold_ids=list(self.model))).holds
        assert {h.hold_id: STATES[h.state] for h in got} == {i: self.state(i) for i in self.model}

    @invariant()
    def audit_is_clean(self):
        assert self.server.audit() == []


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
