"""Inventory rules against real Postgres and real inventory processes: the race, expiry, idempotency, locks, crashes."""

import asyncio
import collections
import signal
import time

import grpc
import pytest

from shop.inventory.v1 import inventory_pb2
from tests.integration.inventory_support import (audit_of, availability, hold, reason, replicas, set_stock,
                                                 stored)
from devstack.procs import wait_until

ABORTED = grpc.StatusCode.ABORTED


async def test_the_flash_sale_race_grants_exactly_the_stock(fresh_dsn, consul, ports, log_dir):
    """1,000 buyers at once, one unit each, 100 units, two replicas: exactly 100 holds, 900 clean refusals."""
    async with replicas(ports, fresh_dsn, log_dir, count=2) as (procs, stubs):
        await set_stock(stubs[0], "HOT-1", 100)

        async def buyer(i):
            try:
                await hold(stubs[i % 2], f"cart:buyer-{i}", {"HOT-1": 1})
                return "held"
            except grpc.aio.AioRpcError as err:
                return f"{err.code().name}/{reason(err)}"

        start = time.monotonic()
        outcomes = collections.Counter(await asyncio.gather(*(buyer(i) for i in range(1000))))
        elapsed = time.monotonic() - start
        print(f"race: {dict(outcomes)} in {elapsed:.2f}s over 2 replicas")
        assert outcomes == {"held": 100, "ABORTED/OUT_OF_STOCK": 900}
        level = (await availability(stubs[1], "HOT-1"))["HOT-1"]
        assert (level.on_hand, level.reserved, level.available) == (100, 100, 0)
        owners = stored(fresh_dsn, "SELECT count(DISTINCT owner), sum(qty) FROM inventory.holds"
                                   " WHERE sku = 'HOT-1' AND state = 'ACTIVE'")
        assert owners == [(100, 100)]
        assert await audit_of(fresh_dsn) == []


async def test_out_of_stock_is_all_or_nothing_and_says_what_is_available(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=1) as (_, (stub,)):
        await set_stock(stub, "A", 5)
        await set_stock(stub, "B", 2)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hold(stub, "cart:x", {"A": 3, "B": 3})
        assert (caught.value.code(), reason(caught.value)) == (ABORTED, "OUT_OF_STOCK")
        from shop_runtime.errors import error_info
        assert dict(error_info(caught.value).metadata) == {"sku": "B", "available": "2", "skus": "B"}
        levels = await availability(stub, "A", "B")
        assert (levels["A"].reserved, levels["B"].reserved) == (0, 0), "nothing of a refused call may stay held"
        assert stored(fresh_dsn, "SELECT count(*) FROM inventory.holds") == [(0,)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hold(stub, "cart:x", {"NOPE": 1})
        assert reason(caught.value) == "SKU_NOT_FOUND"
        assert await audit_of(fresh_dsn) == []


async def test_expired_units_are_available_at_once_without_the_sweeper(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=1, INVENTORY_SWEEP_INTERVAL_SECONDS="0") as (_, (stub,)):
        await set_stock(stub, "E", 5)
        (first,) = await hold(stub, "cart:early", {"E": 5}, ttl=1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hold(stub, "cart:late", {"E": 1})
        assert reason(caught.value) == "OUT_OF_STOCK"
        await asyncio.sleep(1.2)
        # Reads stop counting the hold at its expiry, though nothing has reclaimed it yet.
        assert (await availability(stub, "E"))["E"].available == 5
        assert stored(fresh_dsn, "SELECT reserved FROM inventory.stock WHERE sku = 'E'") == [(5,)]
        (got,) = (await stub.GetHolds(inventory_pb2.GetHoldsRequest(hold_ids=[first.hold_id]))).holds
        assert got.state == inventory_pb2.HOLD_STATE_EXPIRED
        # The next buyer's write reclaims it under the SKU's lock and gets every unit.
        (second,) = await hold(stub, "cart:late", {"E": 5})
        assert second.qty == 5
        assert stored(fresh_dsn, "SELECT state FROM inventory.holds WHERE id = %s", first.hold_id) == [("EXPIRED",)]
        assert stored(fresh_dsn, "SELECT reason, actor FROM inventory.ledger WHERE hold_id = %s ORDER BY id",
                      first.hold_id) == [("HOLD", "unknown"), ("EXPIRE", "unknown")]
        assert await audit_of(fresh_dsn) == []


async def test_sweepers_in_every_replica_reclaim_each_hold_once(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=2, INVENTORY_SWEEP_INTERVAL_SECONDS="0.1") as (_, stubs):
        for i in range(10):
            await set_stock(stubs[0], f"S-{i}", 50)
        # All at once and with a few seconds to live, so every hold is made before the first expires (one made
        # one by one with a second to live could expire, on a loaded machine, before the next hold of its SKU,
        # whose write would then reclaim it instead of a sweeper).
        await asyncio.gather(*(hold(stubs[j % 2], f"cart:{i}-{j}", {f"S-{i}": 3}, ttl=4)
                               for i in range(10) for j in range(5)))
        assert stored(fresh_dsn, "SELECT sum(reserved) FROM inventory.stock") == [(150,)]
        # Nothing writes these SKUs again: only the sweepers can bring the stored figures back.
        wait_until(lambda: stored(fresh_dsn, "SELECT sum(reserved) FROM inventory.stock") == [(0,)], 30,
                   what="sweepers reclaiming every hold")
        assert stored(fresh_dsn, "SELECT count(*), count(DISTINCT hold_id) FROM inventory.ledger"
                                 " WHERE reason = 'EXPIRE'") == [(50, 50)]
        assert stored(fresh_dsn, "SELECT DISTINCT actor FROM inventory.ledger WHERE reason = 'EXPIRE'") == [
            ("inventory-sweeper",)]
        assert await audit_of(fresh_dsn) == []


async def test_a_replayed_key_takes_effect_once(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=2) as (_, stubs):
        await set_stock(stubs[0], "K", 10)
        # Ten concurrent retries of one call, spread over both replicas.
        answers = await asyncio.gather(*(hold(stubs[i % 2], "cart:k", {"K": 2}, key="key-1") for i in range(10)))
        assert len({a[0].hold_id for a in answers}) == 1
        assert (await availability(stubs[0], "K"))["K"].reserved == 2
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hold(stubs[0], "cart:k", {"K": 3}, key="key-1")
        assert (caught.value.code(), reason(caught.value)) == (ABORTED, "IDEMPOTENCY_KEY_REUSED")

        hold_id = answers[0][0].hold_id
        commit = inventory_pb2.CommitHoldsRequest(hold_ids=[hold_id], idempotency_key="pay-1")
        first = await stubs[0].CommitHolds(commit)
        again = await stubs[1].CommitHolds(commit)
        assert first == again
        level = (await availability(stubs[0], "K"))["K"]
        assert (level.on_hand, level.reserved) == (8, 0)
        assert await audit_of(fresh_dsn) == []


async def test_an_ended_hold_never_ends_again(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=1) as (_, (stub,)):
        await set_stock(stub, "X", 10)
        (released,) = await hold(stub, "cart:r", {"X": 2})
        (committed,) = await hold(stub, "cart:c", {"X": 3})
        await stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[released.hold_id]))
        await stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[committed.hold_id]))
        before = stored(fresh_dsn, "SELECT on_hand, reserved FROM inventory.stock WHERE sku = 'X'")
        ledger = stored(fresh_dsn, "SELECT count(*) FROM inventory.ledger")
        attempts = [
            stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[released.hold_id])),
            stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[committed.hold_id])),
            stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[committed.hold_id])),
            stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=released.hold_id, qty=1)),
            # all or nothing: one ended hold among active ones changes none of them
            stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(
                hold_ids=[(await hold(stub, "cart:z", {"X": 1}))[0].hold_id, committed.hold_id])),
        ]
        for attempt in attempts:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await attempt
            assert (caught.value.code(), reason(caught.value)) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                   "HOLD_NOT_ACTIVE")
        on_hand, reserved = before[0]
        assert stored(fresh_dsn, "SELECT on_hand, reserved FROM inventory.stock WHERE sku = 'X'") == [
            (on_hand, reserved + 1)]
        assert stored(fresh_dsn, "SELECT count(*) FROM inventory.ledger") == [(ledger[0][0] + 1,)]
        assert await audit_of(fresh_dsn) == []


async def test_opposite_lock_orders_never_deadlock(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=2) as (_, stubs):
        skus = ["M-1", "M-2", "M-3"]
        for sku in skus:
            await set_stock(stubs[0], sku, 10_000)

        async def buyer(i):
            order = skus if i % 2 else list(reversed(skus))
            holds = await hold(stubs[i % 2], f"cart:m{i}", {s: 1 for s in order})
            await stubs[(i + 1) % 2].ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(
                hold_ids=[h.hold_id for h in reversed(holds)]))

        await asyncio.wait_for(asyncio.gather(*(buyer(i) for i in range(300))), 120)
        levels = await availability(stubs[0], *skus)
        assert all(levels[s].reserved == 0 for s in skus)
        assert await audit_of(fresh_dsn) == []


async def test_kill_9_mid_load_leaves_no_lock_no_half_applied_hold(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=2) as (procs, stubs):
        skus = [f"C-{i}" for i in range(4)]
        for sku in skus:
            await set_stock(stubs[0], sku, 400)
        held = collections.Counter()

        async def buyer(i):
            try:
                holds = await hold(stubs[i % 2], f"cart:c{i}", {skus[i % 4]: 1, skus[(i + 1) % 4]: 1})
                held["ok"] += 1
                if i % 3 == 0:
                    await stubs[i % 2].CommitHolds(inventory_pb2.CommitHoldsRequest(
                        hold_ids=[h.hold_id for h in holds]))
            except grpc.aio.AioRpcError as err:
                held[err.code().name] += 1

        load = asyncio.gather(*(buyer(i) for i in range(600)))
        await asyncio.to_thread(wait_until, lambda: held["ok"] >= 50, 30, 0.01, "load under way")
        procs[0].signal(signal.SIGKILL)
        await load
        assert held["UNAVAILABLE"] > 0, "some calls must have been cut off by the kill"

        def no_advisory_locks():
            return stored(fresh_dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]

        wait_until(no_advisory_locks, 20, what="the killed replica's locks to go")
        # The survivor still sells every SKU the killed replica was locking.
        for sku in skus:
            await hold(stubs[1], "cart:after", {sku: 1})
        assert await audit_of(fresh_dsn) == []
        print(f"crash: {dict(held)}")
