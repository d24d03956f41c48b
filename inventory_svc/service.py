"""The inventory's rules: holds that end exactly once, expiry under the SKU's lock, exact stock, idempotent writes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from inventory_svc import repository as repo
from inventory_svc.answers import IDEMPOTENCY_TABLE, decode_holds, decode_stock, encode
from inventory_svc.batched_writes import MAX_CALLS_PER_TRANSACTION, BatchedWrites
from inventory_svc.campaigns import Campaigns
from inventory_svc.coalescer import Coalescer
from inventory_svc.model import (COMMITTED, RELEASED, HoldRecord, Line, StockRow, check_on_hand, check_qty,
                                 hold_not_found, sku_not_found)
from inventory_svc.sweep import sweep_once
from inventory_svc.validation import (MAX_BATCH, MAX_LINES, MAX_ON_HAND, MAX_TTL_SECONDS, check_hold_ids, check_limit,
                                      check_text, check_ttl, check_uuids)
from shop_runtime import idempotency
from shop_runtime.clock import Clock
from shop_runtime.errors import invalid_argument
from shop_runtime.reasons import refuse
from shop_runtime.validation import distinct_batch

# Why the units on hand of a SKU changed, as a stock adjustment says (the ledger's reason of the entry).
ADJUSTMENT_REASONS = ("RESTOCK", "DAMAGED", "RETURNED", "CORRECTION")

# A line to hold is the model's; named here too for the servicer and the tests.
__all__ = ["Inventory", "Line"]

# What a transaction of its own answers: holds (extend_holds) or a SKU's figures (set_stock).
Answer = TypeVar("Answer", list[HoldRecord], StockRow)

MAX_PRICE = 2_000_000_000


class Inventory:
    """Stock, holds and the ledger of the inventory schema; the only writer of stock.

    Holds, resizes, releases and sales go through one transaction runner (inventory_svc.batched_writes), which
    coalesces concurrent calls on the same SKU (inventory_svc.coalescer) and decides them against a StockTake
    (inventory_svc.model); moves to an order and admin stock changes run one transaction per call.
    """

    def __init__(self, pool: AsyncConnectionPool, clock: Clock, *, max_calls: int = MAX_CALLS_PER_TRANSACTION):
        self._pool = pool
        self._clock = clock
        self._batches = BatchedWrites(pool, clock, max_calls)
        # Flash-sale campaigns: created, cancelled and read one transaction per call (inventory_svc.campaigns).
        self.campaigns = Campaigns(pool, clock)

    @property
    def coalescer(self) -> Coalescer:
        """The transactions run so far and the calls they decided (for metrics)."""
        return self._batches.coalescer

    # --- the coalesced writes -------------------------------------------------------------------

    async def create_holds(self, owner: str, lines: list[Line], ttl_seconds: int, *, key: str = "", actor: str,
                           buyer: str = "", max_units_per_buyer: int = 0) -> list[HoldRecord]:
        """Holds every line's units for `owner` until now + ttl, or nothing at all; with a limit, no line may take
        the buyer past max_units_per_buyer units of its SKU held or sold in all. A line of a SKU whose campaign is
        live holds from its quota at the sale price unless the line expects the regular price (its `price`)."""
        check_text(owner, "owner")
        check_ttl(ttl_seconds)
        if buyer:
            check_text(buyer, "buyer")
        check_limit(max_units_per_buyer)
        if not 1 <= len(lines) <= MAX_LINES:
            raise invalid_argument("lines", f"1..{MAX_LINES} lines per call")
        if len({line.sku for line in lines}) != len(lines):
            raise invalid_argument("lines", "a SKU is named twice")
        for line in lines:
            check_text(line.sku, "sku")
            check_qty(line.qty)
            if not 0 <= line.price <= MAX_PRICE:
                raise invalid_argument("price", f"price must be within 0..{MAX_PRICE}")
            if not 0 <= line.expected_price <= MAX_PRICE:
                raise invalid_argument("expected_price", f"expected_price must be within 0..{MAX_PRICE}")
        limit = max_units_per_buyer if buyer else 0
        # The fingerprint leaves the limit out: a retry under a changed setting is still the same request. Prices
        # are in it only when given, so a line without them is fingerprinted as before they existed.
        args = (owner, [{"sku": x.sku, "qty": x.qty} | ({"price": x.price, "expected": x.expected_price}
                                                        if x.price or x.expected_price else {}) for x in lines],
                ttl_seconds) + ((buyer,) if buyer else ())
        # The buyer's units are read whenever there is a buyer: a live campaign's per-user limit applies even
        # without the store's.
        return await self._batches.submit(
            "create_holds", key, args, actor, [line.sku for line in lines],
            lambda take: take.create(owner, lines, ttl_seconds, actor, buyer=buyer or None, limit=limit),
            buyers=[buyer] if buyer else None)

    async def resize_hold(self, hold_id: str, qty: int, ttl_seconds: int = 0, *, key: str = "", actor: str,
                          owner: str = "", add: int = 0, max_qty: int = 0,
                          max_units_per_buyer: int = 0, expected_price: int = 0, price: int = 0) -> HoldRecord:
        """Sets an active hold's quantity, or grows it by `add` (and, with a ttl, sets its expiry), taking or
        giving back the difference; with max_qty, never above it (QTY_LIMIT); with a limit, never growing its
        buyer past max_units_per_buyer units of its SKU (PURCHASE_LIMIT); with expected_price, only a hold of that
        price (PRICE_CHANGED). A quota hold grows from its quota while its campaign is live (SALE_ENDED after)."""
        check_hold_ids([hold_id])
        if add:
            check_qty(add, "add_qty")
        else:
            check_qty(qty)
        if ttl_seconds:
            check_ttl(ttl_seconds)
        check_limit(max_units_per_buyer)
        if not 0 <= expected_price <= MAX_PRICE:
            raise invalid_argument("expected_price", f"expected_price must be within 0..{MAX_PRICE}")
        if not 0 <= price <= MAX_PRICE:
            raise invalid_argument("price", f"price must be within 0..{MAX_PRICE}")
        skus = await self._batches.skus_of([hold_id])
        args = (hold_id, qty, ttl_seconds, owner, add, max_qty) + ((expected_price,) if expected_price else ())
        # The fingerprint leaves the regular price out, as the limit: a retry after an admin's price change is still
        # the same request, answered as the first was.
        # The hold's buyer's units are read always: a quota hold's campaign may have a per-user limit of its own.
        (resized,) = await self._batches.submit(
            "resize_hold", key, args, actor, [skus[hold_id]],
            lambda take: [take.resize(hold_id, actor, qty=qty, add=add, ttl_seconds=ttl_seconds, owner=owner,
                                      max_qty=max_qty, limit=max_units_per_buyer, expected_price=expected_price,
                                      price=price)],
            hold_ids=[hold_id], buyers=[])
        return resized

    async def _end_holds(self, operation: str, ids: list[str], state: str, key: str, actor: str,
                         owner: str = "") -> list[HoldRecord]:
        """Ends active holds as RELEASED (units back) or COMMITTED (units sold), all or nothing."""
        check_hold_ids(ids)
        skus = await self._batches.skus_of(ids)
        return await self._batches.submit(operation, key, (ids, owner), actor, sorted(set(skus.values())),
                                          lambda take: take.end(ids, state, actor, owner=owner), hold_ids=ids)

    async def release_holds(self, ids: list[str], *, key: str = "", actor: str, owner: str = "") -> list[HoldRecord]:
        """Gives the holds' units back; with `owner`, only if they are still theirs."""
        return await self._end_holds("release_holds", ids, RELEASED, key, actor, owner)

    async def commit_holds(self, ids: list[str], *, key: str = "", actor: str, owner: str = "") -> list[HoldRecord]:
        """Sells the holds' units; refused for any hold that is not active and unexpired (or not `owner`'s)."""
        return await self._end_holds("commit_holds", ids, COMMITTED, key, actor, owner)

    # --- one transaction per call ---------------------------------------------------------------

    async def _write(self, operation: str, key: str, args: tuple[Any, ...],
                     work: Callable[[AsyncConnection], Awaitable[Answer]], decode: Callable[[bytes], Answer]) -> Answer:
        """Runs one stock-changing transaction, replaying the stored answer (read by `decode`) for a key already used.

        `work` takes its SKU locks first and then reads the time (`_locked_now`): every decision of
        expiry is made by the database's clock, at an instant when no one else can change those SKUs.
        """
        key = idempotency.check_key(key)
        # Pipeline mode: statements whose answers are not needed to go on are sent together, so
        # the SKU locks are held for as few round trips as possible (lock, reclaim and read travel
        # as one; the writes travel with the COMMIT).
        async with self._pool.connection() as conn, conn.pipeline():
            async with conn.transaction():
                if key:
                    stored = await idempotency.claim(conn, IDEMPOTENCY_TABLE, operation, key,
                                                     idempotency.fingerprint(operation, *args))
                    if stored is not None:
                        return decode(stored)
                result = await work(conn)
                if key:
                    await idempotency.record(conn, IDEMPOTENCY_TABLE, operation, key, encode(result))
                return result

    async def _locked_now(self, conn: AsyncConnection, skus: list[str], actor: str) -> datetime:
        """Locks the SKUs, reads the time after the locks, reclaims their holds expired by then and gives the quotas
        of their campaigns ended by then back to regular stock."""
        await repo.lock_skus(conn, skus)
        now = await self._clock.db_now(conn)
        await repo.settle(conn, skus, now, actor)
        return now

    async def extend_holds(self, ids: list[str], owner: str, order_id: str, ttl_seconds: int, *, key: str = "",
                           actor: str, from_owner: str = "", max_units_per_buyer: int = 0) -> list[HoldRecord]:
        """Moves holds to `owner`/`order_id` (empty: no order) until now + ttl; expired ones are held anew at their
        own price if their units are free (a quota hold's only from its quota while its campaign is live:
        SALE_ENDED otherwise) and, with a limit, their buyer stays within it; with from_owner, only holds still
        that owner's."""
        check_hold_ids(ids)
        check_text(owner, "owner")
        if order_id:
            check_text(order_id, "order_id")
        check_ttl(ttl_seconds)
        check_limit(max_units_per_buyer)

        async def work(conn: AsyncConnection) -> list[HoldRecord]:
            skus = await repo.hold_skus(conn, ids)
            if missing := [i for i in ids if i not in skus]:
                raise hold_not_found(missing[0])
            take = await repo.take_stock(conn, sorted(set(skus.values())), ids, [], self._clock.fixed(), actor)
            # An expired hold already held again stands for its replacement: a retry of the move, with whatever
            # key, moves the replacement (as it would move a hold still active) instead of holding the units twice;
            # read under the locks, so two moves at once cannot both find it unreplaced. A replacement holds the
            # same SKU for the same buyer, so its buyer's units are among those read.
            named = await repo.replacements(conn, ids)
            if named:
                take.holds |= await repo.get_holds(conn, list(set(named.values())))
            holds = [take.hold(named.get(i, i)) for i in ids]
            result = take.extend(holds, owner, order_id or None, ttl_seconds, actor, from_owner=from_owner,
                                 limit=max_units_per_buyer)
            await repo.write_take(conn, take)
            for expired_id, replacement_id in take.replaced.items():
                await repo.link_replacement(conn, expired_id, replacement_id)
            return result

        return await self._write("extend_holds", key, (ids, owner, order_id, ttl_seconds, from_owner), work,
                                 decode_holds)

    async def get_holds(self, ids: list[str]) -> list[HoldRecord]:
        """The holds among `ids`, with their state as of now."""
        ids = check_uuids(distinct_batch(ids, "hold_ids", MAX_BATCH))
        async with self._pool.connection() as conn:
            found = await repo.get_holds(conn, ids)
            now = await self._clock.db_now(conn)
        return [replace(found[i], state=found[i].state_at(now)) for i in ids if i in found]

    async def active_holds(self, owner_prefix: str, min_age_seconds: int, after: str, limit: int) -> list[HoldRecord]:
        """A page of active holds of owners starting with `owner_prefix`, made min_age_seconds ago or earlier."""
        check_text(owner_prefix, "owner_prefix")
        if not 1 <= limit <= MAX_BATCH:
            raise invalid_argument("limit", f"limit must be within 1..{MAX_BATCH}")
        if not 0 <= min_age_seconds <= MAX_TTL_SECONDS:
            raise invalid_argument("min_age_seconds", f"min_age_seconds must be within 0..{MAX_TTL_SECONDS}")
        if after:
            check_uuids([after])
        async with self._pool.connection() as conn:
            now = await self._clock.db_now(conn)
            return await repo.active_holds(conn, owner_prefix, now - timedelta(seconds=min_age_seconds),
                                           after or None, limit)

    async def availability(self, skus: list[str]) -> list[StockRow]:
        """The figures of each distinct SKU asked for, as of now; a SKU without stock is all zeros."""
        unique = distinct_batch(skus, "skus", MAX_BATCH)
        if not unique:
            return []
        async with self._pool.connection() as conn:
            found = await repo.effective_stock(conn, unique, await self._clock.db_now(conn))
        return [found.get(sku, StockRow(sku, 0, 0)) for sku in unique]

    async def get_stock(self, sku: str) -> StockRow:
        """One SKU's figures as of now; NOT_FOUND (SKU_NOT_FOUND) without a stock row."""
        check_text(sku, "sku")
        async with self._pool.connection() as conn:
            found = await repo.effective_stock(conn, [sku], await self._clock.db_now(conn))
        if sku not in found:
            raise sku_not_found([sku])
        return found[sku]

    async def _locked_row(self, conn: AsyncConnection, sku: str, actor: str) -> tuple[datetime, StockRow]:
        """The SKU locked and settled (`_locked_now`), and its figures then; a SKU without a stock row gets an empty
        one (SetStock and AdjustStock start a new SKU at 0)."""
        now = await self._locked_now(conn, [sku], actor)
        row = (await repo.stock_rows(conn, [sku])).get(sku)
        if row is None:
            await repo.create_stock(conn, sku, now)
            row = StockRow(sku, 0, 0)
        return now, row

    async def set_stock(self, sku: str, on_hand: int, *, key: str = "", actor: str) -> StockRow:
        """Sets the units on hand (creating the SKU's stock); never below what is held and set aside."""
        check_text(sku, "sku")
        if not 0 <= on_hand <= MAX_ON_HAND:
            raise invalid_argument("onHand", f"onHand must be within 0..{MAX_ON_HAND}")

        async def work(conn: AsyncConnection) -> StockRow:
            now, row = await self._locked_row(conn, sku, actor)
            check_on_hand(row, on_hand)
            if on_hand == row.on_hand:
                return row
            return await repo.move_and_read(conn, sku=sku, reason="ADJUST", on_hand_delta=on_hand - row.on_hand,
                                            reserved_delta=0, actor=actor, now=now)

        return await self._write("set_stock", key, (sku, on_hand), work, decode_stock)

    async def adjust_stock(self, sku: str, delta: int, reason: str, *, key: str, actor: str) -> StockRow:
        """Changes the units on hand by `delta` for `reason` (goods received, damaged, returned, counted), under the
        SKU's lock, so concurrent adjustments all count; never below what is held and set aside (BELOW_RESERVED).
        The key is required: a clerk's resend after a lost answer must not count the delivery twice."""
        check_text(sku, "sku")
        if not key:
            raise refuse("IDEMPOTENCY_KEY_REQUIRED", "a stock adjustment needs an Idempotency-Key header")
        if delta == 0 or not -MAX_ON_HAND <= delta <= MAX_ON_HAND:
            raise invalid_argument("delta", f"delta must be non-zero, within -{MAX_ON_HAND}..{MAX_ON_HAND}")
        if reason not in ADJUSTMENT_REASONS:
            raise invalid_argument("reason", "reason must be one of " + ", ".join(ADJUSTMENT_REASONS))

        async def work(conn: AsyncConnection) -> StockRow:
            now, row = await self._locked_row(conn, sku, actor)
            check_on_hand(row, row.on_hand + delta)
            if row.on_hand + delta > MAX_ON_HAND:
                raise invalid_argument("delta", f"on hand would pass {MAX_ON_HAND}")
            return await repo.move_and_read(conn, sku=sku, reason=reason, on_hand_delta=delta, reserved_delta=0,
                                            actor=actor, now=now)

        return await self._write("adjust_stock", key, (sku, delta, reason), work, decode_stock)

    async def sweep_once(self, limit: int = 100) -> int:
        """Reclaims expired holds, and gives ended campaigns' quotas back, of up to `limit` SKUs; a SKU whose lock is
        taken is left to its holder."""
        return await sweep_once(self._pool, self._clock, limit)
