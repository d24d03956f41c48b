"""The inventory client's hold changes: alone while few calls are under way, together in one ChangeHolds past that."""

import asyncio
from datetime import datetime, timezone

import grpc
import pytest

from inventory_svc.client import InventoryClient
from shop.inventory.v1 import inventory_pb2
from shop_runtime.errors import ServiceError


def hold_message(hold_id: str, qty: int) -> inventory_pb2.Hold:
    hold = inventory_pb2.Hold(hold_id=hold_id, owner="cart:u", sku="A", qty=qty, state=inventory_pb2.HOLD_STATE_ACTIVE)
    hold.expires_at.FromDatetime(datetime(2026, 1, 1, tzinfo=timezone.utc))
    return hold


class SlowInventory:
    """A ServiceClient whose calls wait until the test lets them go; records what was sent."""

    service = "inventory"

    def __init__(self):
        self.sent: list[tuple[str, object]] = []
        self.go = asyncio.Event()

    async def call(self, method, request, **kwargs):
        self.sent.append((method, request))
        await self.go.wait()
        if method == "CreateHolds":
            answer = inventory_pb2.CreateHoldsResponse(holds=[hold_message(request.idempotency_key, 1)])
            return (answer, {}) if kwargs.get("trailers") else answer
        assert method == "ChangeHolds"
        results = []
        for change in request.changes:
            if change.create.lines[0].qty > 5:
                refusal = ServiceError(grpc.StatusCode.ABORTED, "OUT_OF_STOCK", "short", {"available": 5})
                results.append(inventory_pb2.HoldChangeResult(status=refusal.to_status_message()))
            else:
                results.append(inventory_pb2.HoldChangeResult(
                    holds=[hold_message(change.create.idempotency_key, change.create.lines[0].qty)],
                    replayed=change.create.idempotency_key == "k-replayed"))
        return inventory_pb2.ChangeHoldsResponse(results=results)


async def test_changes_past_the_separate_calls_go_together_when_one_is_answered():
    inventory = SlowInventory()
    client = InventoryClient(inventory, separate_calls=2)
    keys = ["k0", "k1", "k2", "k-replayed", "k4"]
    qty = {"k4": 9}
    calls = [asyncio.create_task(client.hold("cart:u", {"A": qty.get(k, 1)}, 600, k, user=f"u-{k}")) for k in keys]
    await asyncio.sleep(0.01)
    assert [m for m, _ in inventory.sent] == ["CreateHolds", "CreateHolds"]  # two alone; three wait
    inventory.go.set()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert [m for m, _ in inventory.sent] == ["CreateHolds", "CreateHolds", "ChangeHolds"]
    (_, batch), = [(m, r) for m, r in inventory.sent if m == "ChangeHolds"]
    assert [(c.user, c.create.idempotency_key) for c in batch.changes] == [
        ("u-k2", "k2"), ("u-k-replayed", "k-replayed"), ("u-k4", "k4")]
    assert [h[0].hold_id for h in done[:4]] == ["k0", "k1", "k2", "k-replayed"]
    assert [h[0].replayed for h in done[:4]] == [False, False, False, True]
    assert isinstance(done[4], ServiceError) and done[4].reason == "OUT_OF_STOCK"
    assert done[4].metadata == {"available": "5"}


async def test_a_lost_change_holds_call_fails_each_of_its_changes_as_unavailable():
    class Down(SlowInventory):
        async def call(self, method, request, **kwargs):
            if method == "ChangeHolds":
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE", "inventory is unavailable")
            return await super().call(method, request, **kwargs)

    inventory = Down()
    client = InventoryClient(inventory, separate_calls=1)
    first = asyncio.create_task(client.hold("cart:u", {"A": 1}, 600, "k0"))
    waiting = [asyncio.create_task(client.hold("cart:u", {"A": 1}, 600, f"k{i}")) for i in (1, 2)]
    await asyncio.sleep(0.01)
    inventory.go.set()
    assert (await first)[0].hold_id == "k0"
    for task in waiting:
        with pytest.raises(ServiceError) as caught:
            await task
        assert caught.value.reason == "DEPENDENCY_UNAVAILABLE"
