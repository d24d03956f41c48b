"""A hot SKU: calls that arrive while a transaction for their SKU runs are decided together by the next one.

Each test holds the SKU's advisory lock from its own connection for a while, so a first call's
transaction waits inside Postgres and the calls sent meanwhile queue behind it; then it lets the lock
go and reads what happened. A transaction's ledger entries share its instant (`created_at`), which
tells from outside how calls were grouped. Real inventory processes, real Postgres.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

import grpc
import psycopg
import pytest

from devstack.procs import wait_until
from inventory_svc.repository import sku_lock_key
from shop.inventory.v1 import inventory_pb2
from shop_runtime.errors import error_info
from tests.integration.inventory_support import audit_of, availability, hold, reason, replicas, set_stock, stored

ABORTED = grpc.StatusCode.ABORTED


def waiting_for_lock(dsn: str) -> list[int]:
    """Backends of the database waiting for an advisory lock."""
    return [r[0] for r in stored(dsn, "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                                      " WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = current_database()")]


@contextlib.asynccontextmanager
async def sku_locked(dsn: str, sku: str):
    """Holds the SKU's advisory lock (as a long transaction would) until the block ends."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (sku_lock_key(sku),))
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (sku_lock_key(sku),))


async def outcome(call) -> str | inventory_pb2.Hold:
    """The hold a create or resize answered, or `CODE/REASON` of its refusal."""
    try:
        answer = await call
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}/{reason(err)}"
    if isinstance(answer, inventory_pb2.ResizeHoldResponse):
        return answer.hold
    if isinstance(answer, inventory_pb2.ReleaseHoldsResponse):
        return "released"
    return answer.holds[0]


def create(stub, owner: str, sku: str, qty: int, key: str = "", buyer: str = "", limit: int = 0):
    return stub.CreateHolds(inventory_pb2.CreateHoldsRequest(
        owner=owner, lines=[inventory_pb2.HoldLine(sku=sku, qty=qty)], ttl_seconds=600, idempotency_key=key,
        buyer=buyer, max_units_per_buyer=limit), timeout=30)


async def queued_behind_a_waiting_transaction(dsn: str, stub, sku: str, calls: list) -> tuple[asyncio.Task, list]:
    """Sends a first one-unit hold, waits until its transaction waits for the lock, then sends `calls` (coroutine
    factories) one after another, so they arrive in that order while it waits. Returns the tasks."""
    first = asyncio.create_task(outcome(create(stub, "cart:first", sku, 1)))
    await asyncio.to_thread(wait_until, lambda: waiting_for_lock(dsn), 10, 0.02, "the first call's transaction")
    tasks = []
    for make in calls:
        tasks.append(asyncio.create_task(outcome(make())))
        await asyncio.sleep(0.05)  # one after another: the arrival order is the list's
    return first, tasks


def transactions_of(dsn: str, sku: str) -> list[tuple]:
    """The instants of the transactions that wrote the SKU's ledger, with the entries each wrote, in order."""
    return stored(dsn, "SELECT created_at, array_agg(reason || ':' || reserved_delta ORDER BY id)"
                       " FROM inventory.ledger WHERE sku = %s AND reason <> 'ADJUST' GROUP BY created_at ORDER BY 1",
                  sku)


async def test_calls_queued_behind_a_transaction_are_decided_together_in_arrival_order(fresh_dsn, consul, ports,
                                                                                       log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=1) as (_, (stub,)):
        await set_stock(stub, "HOT-A", 10)
        async with sku_locked(fresh_dsn, "HOT-A"):
            first, (a, b, c) = await queued_behind_a_waiting_transaction(fresh_dsn, stub, "HOT-A", [
                lambda: create(stub, "cart:a", "HOT-A", 6),
                lambda: create(stub, "cart:b", "HOT-A", 5),
                lambda: create(stub, "cart:c", "HOT-A", 3),
            ])
            await asyncio.sleep(0.3)
            # Nothing is answered before its transaction commits, and none can commit while the lock is held.
            assert not any(t.done() for t in (first, a, b, c))
        answers = await asyncio.gather(first, a, b, c)
        # 10 units: the first takes 1, then in arrival order a takes 6, b (5 > 3 left) is refused, c takes the last 3.
        assert [x.qty if isinstance(x, inventory_pb2.Hold) else x for x in answers] == [1, 6, "ABORTED/OUT_OF_STOCK", 3]
        level = (await availability(stub, "HOT-A"))["HOT-A"]
        assert (level.reserved, level.available) == (10, 0)
        # Two transactions: the first call's, then one for everything that queued behind it.
        assert [entries for _, entries in transactions_of(fresh_dsn, "HOT-A")] == [["HOLD:1"], ["HOLD:6", "HOLD:3"]]
        assert await audit_of(fresh_dsn) == []


async def test_a_refused_call_changes_nothing_and_the_others_of_its_transaction_go_through(fresh_dsn, consul, ports,
                                                                                        log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=1) as (_, (stub,)):
        await set_stock(stub, "HOT-B", 20)
        (kept,) = await hold(stub, "cart:k", {"HOT-B": 2})
        (gone,) = await hold(stub, "cart:g", {"HOT-B": 1})
        await stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[gone.hold_id]))
        async with sku_locked(fresh_dsn, "HOT-B"):
            first, tasks = await queued_behind_a_waiting_transaction(fresh_dsn, stub, "HOT-B", [
                # grows `kept` by 3
                lambda: stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=kept.hold_id, add_qty=3), timeout=30),
                # all or nothing: `gone` is released already, so `kept` is not released either
                lambda: stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[kept.hold_id, gone.hold_id]),
                                          timeout=30),
                # past the line's max: refused
                lambda: stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=kept.hold_id, add_qty=1, max_qty=5),
                                        timeout=30),
                lambda: create(stub, "cart:n", "HOT-B", 4),
                # shrinks `kept` to 1, after the growth above
                lambda: stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=kept.hold_id, qty=1), timeout=30),
            ])
        answers = [await first, *await asyncio.gather(*tasks)]
        shown = [x if isinstance(x, str) else (x.hold_id == kept.hold_id, x.qty) for x in answers]
        assert shown == [(False, 1), (True, 5), "FAILED_PRECONDITION/HOLD_NOT_ACTIVE", "FAILED_PRECONDITION/QTY_LIMIT",
                         (False, 4), (True, 1)]
        level = (await availability(stub, "HOT-B"))["HOT-B"]
        assert level.reserved == 1 + 1 + 4
        assert [entries for _, entries in transactions_of(fresh_dsn, "HOT-B")][-2:] == [
            ["HOLD:1"], ["RESIZE:3", "HOLD:4", "RESIZE:-4"]]
        assert await audit_of(fresh_dsn) == []


async def test_a_transaction_that_fails_fails_only_its_own_calls(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=1) as (_, (stub,)):
        await set_stock(stub, "HOT-C", 10)
        async with sku_locked(fresh_dsn, "HOT-C"):
            first, tasks = await queued_behind_a_waiting_transaction(fresh_dsn, stub, "HOT-C", [
                lambda: create(stub, "cart:a", "HOT-C", 2),
                lambda: create(stub, "cart:b", "HOT-C", 3),
            ])
            # The first transaction's connection dies while it waits (a database restart, a network cut).
            (pid,) = waiting_for_lock(fresh_dsn)
            stored(fresh_dsn, "SELECT pg_terminate_backend(%s)", pid)
            failed = await first
            # The calls queued behind it have their own transaction, which now waits for the lock in turn.
            await asyncio.to_thread(wait_until, lambda: waiting_for_lock(fresh_dsn), 10, 0.02, "the next transaction")
        assert failed == "UNAVAILABLE/STOCK_WRITE_FAILED"
        assert [x.qty for x in await asyncio.gather(*tasks)] == [2, 3]
        assert (await availability(stub, "HOT-C"))["HOT-C"].reserved == 5
        assert stored(fresh_dsn, "SELECT owner FROM inventory.holds ORDER BY owner") == [("cart:a",), ("cart:b",)]
        assert await audit_of(fresh_dsn) == []


async def test_idempotency_keys_inside_a_transaction(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=1) as (_, (stub,)):
        await set_stock(stub, "HOT-D", 10)
        async with sku_locked(fresh_dsn, "HOT-D"):
            first, tasks = await queued_behind_a_waiting_transaction(fresh_dsn, stub, "HOT-D", [
                lambda: create(stub, "cart:k", "HOT-D", 2, key="k-1"),
                lambda: create(stub, "cart:k", "HOT-D", 2, key="k-1"),  # a retry while the first still waits
                lambda: create(stub, "cart:k", "HOT-D", 3, key="k-1"),  # the same key for another request
                lambda: create(stub, "cart:z", "HOT-D", 50, key="k-2"),  # refused: its key stays free
            ])
        one, again, other, short = await asyncio.gather(*tasks)
        assert isinstance(one, inventory_pb2.Hold) and again == one
        assert (other, short) == ("ABORTED/IDEMPOTENCY_KEY_REUSED", "ABORTED/OUT_OF_STOCK")
        await first
        assert (await availability(stub, "HOT-D"))["HOT-D"].reserved == 1 + 2
        # The refused call's key may be used again once stock allows it.
        (later,) = (await create(stub, "cart:z", "HOT-D", 5, key="k-2")).holds
        assert later.qty == 5
        # A replay answers the first answer and says it is one.
        call = create(stub, "cart:k", "HOT-D", 2, key="k-1")
        assert (await call).holds[0] == one
        assert ("idempotent-replayed", "true") in tuple(await call.trailing_metadata())
        assert await audit_of(fresh_dsn) == []


async def test_the_purchase_limit_counts_what_a_buyer_holds_and_bought_in_the_same_transaction(
        fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=1) as (_, (stub,)):
        await set_stock(stub, "HOT-E", 100)
        (bought,) = (await create(stub, "cart:u", "HOT-E", 1, buyer="u", limit=5)).holds
        await stub.CommitHolds(inventory_pb2.CommitHoldsRequest(hold_ids=[bought.hold_id]))
        (given_back,) = (await create(stub, "cart:u", "HOT-E", 3, buyer="u", limit=5)).holds
        await stub.ReleaseHolds(inventory_pb2.ReleaseHoldsRequest(hold_ids=[given_back.hold_id]))
        async with sku_locked(fresh_dsn, "HOT-E"):
            first, tasks = await queued_behind_a_waiting_transaction(fresh_dsn, stub, "HOT-E", [
                lambda: create(stub, "cart:u", "HOT-E", 2, buyer="u", limit=5),  # 1 bought + 2 = 3
                lambda: create(stub, "cart:u2", "HOT-E", 2, buyer="u", limit=5),  # 5: at the limit, allowed
                lambda: create(stub, "cart:u", "HOT-E", 1, buyer="u", limit=5),  # 6: refused
                lambda: create(stub, "cart:v", "HOT-E", 5, buyer="v", limit=5),  # another buyer
                lambda: create(stub, "cart:u", "HOT-E", 1, buyer="u"),  # no limit asked
            ])
        answers = await asyncio.gather(*tasks)
        await first
        assert [x if isinstance(x, str) else x.qty for x in answers] == [2, 2, "ABORTED/PURCHASE_LIMIT", 5, 1]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=answers[0].hold_id, add_qty=1,
                                                                  max_units_per_buyer=6))
        assert refused.value.code() == ABORTED
        assert dict(error_info(refused.value).metadata) == {"sku": "HOT-E", "limit": "6", "has": "6"}
        shrunk = await stub.ResizeHold(inventory_pb2.ResizeHoldRequest(hold_id=answers[0].hold_id, qty=1,
                                                                       max_units_per_buyer=6))
        assert shrunk.hold.qty == 1  # giving back is never refused
        assert await audit_of(fresh_dsn) == []


async def test_a_call_alone_starts_its_transaction_at_once(fresh_dsn, consul, ports, log_dir):
    """No waiting for company: with nothing else under way, a call's transaction is already at the lock."""
    async with replicas(ports, fresh_dsn, log_dir, count=1) as (_, (stub,)):
        await set_stock(stub, "HOT-F", 10)
        for _ in range(3):
            await hold(stub, "cart:s", {"HOT-F": 1})
        # One after another: one transaction each.
        assert len(transactions_of(fresh_dsn, "HOT-F")) == 3
        async with sku_locked(fresh_dsn, "HOT-F"):
            alone = asyncio.create_task(outcome(create(stub, "cart:s", "HOT-F", 1)))
            await asyncio.to_thread(wait_until, lambda: waiting_for_lock(fresh_dsn), 5, 0.01, "the call at the lock")
        assert (await alone).qty == 1


async def test_a_crowd_on_one_sku_is_served_by_fewer_transactions_than_calls(fresh_dsn, consul, ports, log_dir):
    async with replicas(ports, fresh_dsn, log_dir, count=2) as (_, stubs):
        await set_stock(stubs[0], "HOT-G", 300)

        async def buyer(i):
            try:
                await hold(stubs[i % 2], f"cart:g{i}", {"HOT-G": 1})
                return "held"
            except grpc.aio.AioRpcError as err:
                return reason(err)

        outcomes = collections.Counter(await asyncio.gather(*(buyer(i) for i in range(600))))
        assert outcomes == {"held": 300, "OUT_OF_STOCK": 300}
        transactions = len(transactions_of(fresh_dsn, "HOT-G"))
        print(f"600 calls, 300 units, two replicas: {transactions} transactions wrote the 300 holds")
        assert transactions < 300
        assert await audit_of(fresh_dsn) == []
