"""The inventory's rules: holds that end exactly once, expiry under the SKU's lock, exact stock, idempotent writes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from inventory_svc import repository as repo
from inventory_svc.answers import IDEMPOTENCY_TABLE, decode_holds, decode_stock, encode
from inventory_svc.batched_writes import MAX_CALLS_PER_TRANSACTION, BatchedWrites
from inventory_svc.coalescer import Coalescer
from inventory_svc.model import (ACTIVE, COMMITTED, EXPIRED, RELEASED, HoldRecord, StockRow, check_owner,
                                 check_qty, hold_not_found, not_active, out_of_stock, purchase_limit, sku_not_found)
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

# What a transaction of its own answers: holds (extend_holds) or a SKU's figures (set_stock).
Answer = TypeVar("Answer", list[HoldRecord], StockRow)


@dataclass(frozen=True)
class Line:
    """Units of one SKU to hold."""

    sku: str
    qty: int


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

    @property
    def coalescer(self) -> Coalescer:
        """The transactions run so far and the calls they decided (for metrics)."""
        return self._batches.coalescer

    # --- the coalesced writes -------------------------------------------------------------------

    async def create_holds(self, owner: str, lines: list[Line], ttl_seconds: int, *, key: str = "", actor: str,
                           buyer: str = "", max_units_per_buyer: int = 0) -> list[HoldRecord]:
        """Holds every line's units for `owner` until now + ttl, or nothing at all; with a limit, no line may take
        the buyer past max_units_per_buyer units of its SKU held or sold in all."""
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
        wanted = {line.sku: line.qty for line in lines}
        limit = max_units_per_buyer if buyer else 0
        # The fingerprint leaves the limit out: a retry under a changed setting is still the same request.
        args = (owner, [{"sku": x.sku, "qty": x.qty} for x in lines], ttl_seconds) + ((buyer,) if buyer else ())
        return await self._batches.submit(
            "create_holds", key, args, actor, list(wanted),
            lambda take: take.create(owner, wanted, ttl_seconds, actor, buyer=buyer or None, limit=limit),
            buyers=[buyer] if limit else None)

    async def resize_hold(self, hold_id: str, qty: int, ttl_seconds: int = 0, *, key: str = "", actor: str,
                          owner: str = "", add: int = 0, max_qty: int = 0,
                          max_units_per_buyer: int = 0) -> HoldRecord:
        """Sets an active hold's quantity, or grows it by `add` (and, with a ttl, sets its expiry), taking or
        giving back the difference; with max_qty, never above it (QTY_LIMIT); with a limit, never growing its
        buyer past max_units_per_buyer units of its SKU (PURCHASE_LIMIT)."""
        check_hold_ids([hold_id])
        if add:
            check_qty(add, "add_qty")
        else:
            check_qty(qty)
        if ttl_seconds:
            check_ttl(ttl_seconds)
        check_limit(max_units_per_buyer)
        skus = await self._batches.skus_of([hold_id])
        (resized,) = await self._batches.submit(
            "resize_hold", key, (hold_id, qty, ttl_seconds, owner, add, max_qty), actor, [skus[hold_id]],
            lambda take: [take.resize(hold_id, actor, qty=qty, add=add, ttl_seconds=ttl_seconds, owner=owner,
                                      max_qty=max_qty, limit=max_units_per_buyer)],
            hold_ids=[hold_id], buyers=[] if max_units_per_buyer else None)
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
        """Locks the SKUs, reads the time after the locks, and reclaims their holds expired by then."""
        await repo.lock_skus(conn, skus)
        now = await self._clock.db_now(conn)
        await repo.reclaim_expired(conn, sorted(set(skus)), now, actor)
        return now

    async def _locked_holds(self, conn: AsyncConnection, ids: list[str], actor: str, *,
                            replaced: bool = False) -> tuple[list[HoldRecord], datetime]:
        """Locks the SKUs of the holds, reclaims their expired holds, and returns the holds as they now are;
        with `replaced`, an expired hold held again stands for its replacement (read under the same locks,
        since a replacement holds the same SKU)."""
        skus = await repo.hold_skus(conn, ids)
        missing = [i for i in ids if i not in skus]
        if missing:
            raise hold_not_found(missing[0])
        now = await self._locked_now(conn, list(skus.values()), actor)
        if replaced:
            named = await repo.replacements(conn, ids)
            ids = [named.get(i, i) for i in ids]
        holds = await repo.get_holds(conn, ids)
        return [holds[i] for i in ids], now

    @staticmethod
    def _short(rows: dict[str, StockRow], wanted: dict[str, int]) -> dict[str, int]:
        return {sku: rows[sku].available for sku, qty in wanted.items() if qty > rows[sku].available}

    async def extend_holds(self, ids: list[str], owner: str, order_id: str, ttl_seconds: int, *, key: str = "",
                           actor: str, from_owner: str = "", max_units_per_buyer: int = 0) -> list[HoldRecord]:
        """Moves holds to `owner`/`order_id` (empty: no order) until now + ttl; expired ones are held anew if
        their units are free (and, with a limit, their buyer stays within it); with from_owner, only holds still
        that owner's."""
        check_hold_ids(ids)
        check_text(owner, "owner")
        if order_id:
            check_text(order_id, "order_id")
        check_ttl(ttl_seconds)
        check_limit(max_units_per_buyer)

        async def work(conn: AsyncConnection) -> list[HoldRecord]:
            # An expired hold already held again stands for its replacement: a retry of the move, with
            # whatever key, moves the replacement (as it would move a hold still active) instead of
            # holding the units twice; read under the locks, so two moves at once cannot both find it unreplaced.
            holds, now = await self._locked_holds(conn, ids, actor, replaced=True)
            check_owner(holds, from_owner)
            if ended := [h for h in holds if h.state in (COMMITTED, RELEASED)]:
                raise not_active(ended[0])
            again: dict[str, int] = {}
            per_buyer: dict[tuple[str, str], int] = {}
            for h in holds:
                if h.state == EXPIRED:
                    again[h.sku] = again.get(h.sku, 0) + h.qty
                    if h.buyer:
                        per_buyer[(h.sku, h.buyer)] = per_buyer.get((h.sku, h.buyer), 0) + h.qty
            if again and max_units_per_buyer and per_buyer:
                has = await repo.buyer_units(conn, list(again), sorted({b for _, b in per_buyer}))
                for (sku, buyer), more in per_buyer.items():
                    if has.get((sku, buyer), 0) + more > max_units_per_buyer:
                        raise purchase_limit(sku, max_units_per_buyer, has.get((sku, buyer), 0))
            if again and (short := self._short(await repo.stock_rows(conn, list(again)), again)):
                raise out_of_stock(short)
            expires_at = now + timedelta(seconds=ttl_seconds)
            result = []
            for h in holds:
                if h.state == ACTIVE:
                    result.append(await repo.update_hold(conn, h, now, owner=owner, order_id=order_id or None,
                                                         expires_at=expires_at))
                    continue
                new = await repo.insert_hold(conn, owner=owner, sku=h.sku, qty=h.qty, expires_at=expires_at,
                                             order_id=order_id or None, now=now, buyer=h.buyer)
                await repo.link_replacement(conn, h.id, new.id)
                await repo.move(conn, sku=h.sku, reason="HOLD", on_hand_delta=0, reserved_delta=h.qty,
                                actor=actor, now=now, hold_id=new.id, order_id=order_id or None)
                result.append(new)
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

    async def set_stock(self, sku: str, on_hand: int, *, key: str = "", actor: str) -> StockRow:
        """Sets the units on hand (creating the SKU's stock); never below what is held."""
        check_text(sku, "sku")
        if not 0 <= on_hand <= MAX_ON_HAND:
            raise invalid_argument("onHand", f"onHand must be within 0..{MAX_ON_HAND}")

        async def work(conn: AsyncConnection) -> StockRow:
            now = await self._locked_now(conn, [sku], actor)
            row = (await repo.stock_rows(conn, [sku])).get(sku)
            if row is None:
                await repo.create_stock(conn, sku, now)
                row = StockRow(sku, 0, 0)
            if on_hand < row.reserved:
                raise refuse("BELOW_RESERVED", f"{row.reserved} units of {sku} are held; on hand cannot go below that",
                             {"sku": sku, "reserved": row.reserved})
            if on_hand == row.on_hand:
                return row
            return await repo.move_and_read(conn, sku=sku, reason="ADJUST", on_hand_delta=on_hand - row.on_hand,
                                            reserved_delta=0, actor=actor, now=now)

        return await self._write("set_stock", key, (sku, on_hand), work, decode_stock)

    async def adjust_stock(self, sku: str, delta: int, reason: str, *, key: str, actor: str) -> StockRow:
        """Changes the units on hand by `delta` for `reason` (goods received, damaged, returned, counted), under the
        SKU's lock, so concurrent adjustments all count; never below what is held (BELOW_RESERVED). The key is
        required: a clerk's resend after a lost answer must not count the delivery twice."""
        check_text(sku, "sku")
        if not key:
            raise refuse("IDEMPOTENCY_KEY_REQUIRED", "a stock adjustment needs an Idempotency-Key header")
        if delta == 0 or not -MAX_ON_HAND <= delta <= MAX_ON_HAND:
            raise invalid_argument("delta", f"delta must be non-zero, within -{MAX_ON_HAND}..{MAX_ON_HAND}")
        if reason not in ADJUSTMENT_REASONS:
            raise invalid_argument("reason", "reason must be one of " + ", ".join(ADJUSTMENT_REASONS))

        async def work(conn: AsyncConnection) -> StockRow:
            now = await self._locked_now(conn, [sku], actor)
            row = (await repo.stock_rows(conn, [sku])).get(sku)
            if row is None:
                await repo.create_stock(conn, sku, now)
                row = StockRow(sku, 0, 0)
            if row.on_hand + delta < row.reserved:
                raise refuse("BELOW_RESERVED", f"{row.reserved} units of {sku} are held; on hand cannot go below that",
                             {"sku": sku, "reserved": row.reserved})
            if row.on_hand + delta > MAX_ON_HAND:
                raise invalid_argument("delta", f"on hand would pass {MAX_ON_HAND}")
            return await repo.move_and_read(conn, sku=sku, reason=reason, on_hand_delta=delta, reserved_delta=0,
                                            actor=actor, now=now)

        return await self._write("adjust_stock", key, (sku, delta, reason), work, decode_stock)

    async def sweep_once(self, limit: int = 100) -> int:
        """Reclaims expired holds of up to `limit` SKUs; a SKU whose lock is taken is left to its holder."""
        return await sweep_once(self._pool, self._clock, limit)
