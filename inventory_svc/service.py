"""The inventory's rules: holds that end exactly once, expiry under the SKU's lock, exact stock, idempotent writes."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Awaitable, Callable

import grpc
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from inventory_svc import repository as repo
from inventory_svc.model import ACTIVE, COMMITTED, EXPIRED, RELEASED, HoldRecord, StockRow
from shop_runtime import idempotency
from shop_runtime.clock import Clock
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.validation import distinct_batch

_LOGGER = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_LINES = 100
MAX_QTY = 10_000
MAX_TTL_SECONDS = 86_400
MAX_ON_HAND = 1_000_000
MAX_OWNER = 200
IDEMPOTENCY_TABLE = sql.Identifier("inventory", "idempotency")
SWEEPER_ACTOR = "inventory-sweeper"


@dataclass(frozen=True)
class Line:
    """Units of one SKU to hold."""

    sku: str
    qty: int


# --- errors -------------------------------------------------------------------------------------

def out_of_stock(short: dict[str, int]) -> ServiceError:
    """ABORTED/OUT_OF_STOCK naming every short SKU; the first one's available units in `available`."""
    first = next(iter(short))
    return ServiceError(
        grpc.StatusCode.ABORTED, "OUT_OF_STOCK",
        "not enough units available: " + ", ".join(f"{s} has {n}" for s, n in short.items()),
        {"sku": first, "available": short[first], "skus": ",".join(short)},
    )


def _hold_not_found(hold_id: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND", f"no hold {hold_id}", {"hold_id": hold_id})


def _not_active(hold: HoldRecord) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "HOLD_NOT_ACTIVE",
                        f"hold {hold.id} is {hold.state}", {"hold_id": hold.id, "state": hold.state})


def _check_owner(holds: list[HoldRecord], owner: str) -> None:
    """With an expected owner, every hold must still be theirs."""
    for hold in holds:
        if owner and hold.owner != owner:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "HOLD_NOT_OWNED",
                               f"hold {hold.id} no longer belongs to {owner}", {"hold_id": hold.id})


def _sku_not_found(skus: list[str]) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, "SKU_NOT_FOUND", "no stock for " + ", ".join(skus),
                        {"sku": skus[0], "skus": ",".join(skus)})


# --- validation ---------------------------------------------------------------------------------

def _check_qty(qty: int, field: str = "qty") -> int:
    if not 1 <= qty <= MAX_QTY:
        raise invalid_argument(field, f"{field} must be within 1..{MAX_QTY}")
    return qty


def _check_ttl(ttl: int) -> int:
    if not 1 <= ttl <= MAX_TTL_SECONDS:
        raise invalid_argument("ttl_seconds", f"ttl_seconds must be within 1..{MAX_TTL_SECONDS}")
    return ttl


def _check_text(value: str, field: str, maximum: int = MAX_OWNER) -> str:
    if not 1 <= len(value) <= maximum:
        raise invalid_argument(field, f"{field} must be 1..{maximum} characters")
    return value


def _check_uuids(ids: list[str]) -> list[str]:
    for hold_id in ids:
        try:
            uuid.UUID(hold_id)
        except ValueError:
            raise invalid_argument("hold_ids", f"{hold_id!r} is not a hold id") from None
    return ids


def _check_hold_ids(ids: list[str]) -> list[str]:
    if not ids:
        raise invalid_argument("hold_ids", "at least one hold id is required")
    if len(set(ids)) != len(ids):
        raise invalid_argument("hold_ids", "a hold id is named twice")
    if len(ids) > MAX_LINES:
        raise invalid_argument("hold_ids", f"at most {MAX_LINES} holds per call")
    return _check_uuids(ids)


# --- stored answers of idempotent calls -----------------------------------------------------------

def _encode(result: list[HoldRecord] | StockRow) -> bytes:
    if isinstance(result, StockRow):
        return json.dumps({"stock": asdict(result)}).encode()
    return json.dumps({"holds": [asdict(h) | {"expires_at": h.expires_at.isoformat()} for h in result]}).encode()


def _decode(data: bytes) -> list[HoldRecord] | StockRow:
    doc = json.loads(data)
    if "stock" in doc:
        return StockRow(**doc["stock"])
    return [HoldRecord(**(h | {"expires_at": datetime.fromisoformat(h["expires_at"])})) for h in doc["holds"]]


class Inventory:
    """Stock, holds and the ledger of the inventory schema; the only writer of stock."""

    def __init__(self, pool: AsyncConnectionPool, clock: Clock):
        self._pool = pool
        self._clock = clock

    async def _write(self, operation: str, key: str, args: tuple,
                     work: Callable[[AsyncConnection], Awaitable[list[HoldRecord] | StockRow]]):
        """Runs one stock-changing transaction, replaying the stored answer for a key already used.

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
                        return _decode(stored)
                result = await work(conn)
                if key:
                    await idempotency.record(conn, IDEMPOTENCY_TABLE, operation, key, _encode(result))
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
            raise _hold_not_found(missing[0])
        now = await self._locked_now(conn, list(skus.values()), actor)
        if replaced:
            named = await repo.replacements(conn, ids)
            ids = [named.get(i, i) for i in ids]
        holds = await repo.get_holds(conn, ids)
        return [holds[i] for i in ids], now

    @staticmethod
    def _short(rows: dict[str, StockRow], wanted: dict[str, int]) -> dict[str, int]:
        return {sku: rows[sku].available for sku, qty in wanted.items() if qty > rows[sku].available}

    async def create_holds(self, owner: str, lines: list[Line], ttl_seconds: int, *, key: str = "",
                           actor: str) -> list[HoldRecord]:
        """Holds every line's units for `owner` until now + ttl, or nothing at all."""
        _check_text(owner, "owner")
        _check_ttl(ttl_seconds)
        if not 1 <= len(lines) <= MAX_LINES:
            raise invalid_argument("lines", f"1..{MAX_LINES} lines per call")
        if len({line.sku for line in lines}) != len(lines):
            raise invalid_argument("lines", "a SKU is named twice")
        for line in lines:
            _check_text(line.sku, "sku")
            _check_qty(line.qty)

        async def work(conn: AsyncConnection) -> list[HoldRecord]:
            skus = [line.sku for line in lines]
            now = await self._locked_now(conn, skus, actor)
            rows = await repo.stock_rows(conn, skus)
            if missing := [s for s in skus if s not in rows]:
                raise _sku_not_found(missing)
            if short := self._short(rows, {line.sku: line.qty for line in lines}):
                raise out_of_stock(short)
            expires_at = now + timedelta(seconds=ttl_seconds)
            holds = []
            for line in lines:
                hold = await repo.insert_hold(conn, owner=owner, sku=line.sku, qty=line.qty,
                                              expires_at=expires_at, order_id=None, now=now)
                await repo.move(conn, sku=line.sku, reason="HOLD", on_hand_delta=0, reserved_delta=line.qty,
                                actor=actor, now=now, hold_id=hold.id)
                holds.append(hold)
            return holds

        return await self._write("create_holds", key, (owner, [asdict(x) for x in lines], ttl_seconds), work)

    async def resize_hold(self, hold_id: str, qty: int, ttl_seconds: int = 0, *, key: str = "",
                          actor: str, owner: str = "", add: int = 0, max_qty: int = 0) -> HoldRecord:
        """Sets an active hold's quantity, or grows it by `add` (and, with a ttl, sets its expiry), taking or
        giving back the difference; with max_qty, never above it (QTY_LIMIT)."""
        _check_hold_ids([hold_id])
        if add:
            _check_qty(add, "add_qty")
        else:
            _check_qty(qty)
        if ttl_seconds:
            _check_ttl(ttl_seconds)

        async def work(conn: AsyncConnection) -> list[HoldRecord]:
            (hold,), now = await self._locked_holds(conn, [hold_id], actor)
            _check_owner([hold], owner)
            if hold.state != ACTIVE:
                raise _not_active(hold)
            target = hold.qty + add if add else qty
            if max_qty and target > max_qty:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "QTY_LIMIT",
                                   f"a hold of this caller holds at most {max_qty} units, this one would hold {target}",
                                   {"max": max_qty, "qty": target})
            _check_qty(target)
            delta = target - hold.qty
            if delta > 0 and (short := self._short(await repo.stock_rows(conn, [hold.sku]), {hold.sku: delta})):
                raise out_of_stock(short)
            expires_at = now + timedelta(seconds=ttl_seconds) if ttl_seconds else hold.expires_at
            updated = await repo.update_hold(conn, hold, now, qty=target, expires_at=expires_at)
            if delta:
                await repo.move(conn, sku=hold.sku, reason="RESIZE", on_hand_delta=0, reserved_delta=delta,
                                actor=actor, now=now, hold_id=hold.id, order_id=hold.order_id)
            return [updated]

        (result,) = await self._write("resize_hold", key, (hold_id, qty, ttl_seconds, owner, add, max_qty), work)
        return result

    async def _end_holds(self, operation: str, ids: list[str], state: str, key: str, actor: str,
                         owner: str = "") -> list[HoldRecord]:
        """Ends active holds as RELEASED (units back) or COMMITTED (units sold), all or nothing."""
        _check_hold_ids(ids)
        reason, sold = ("COMMIT", True) if state == COMMITTED else ("RELEASE", False)

        async def work(conn: AsyncConnection) -> list[HoldRecord]:
            holds, now = await self._locked_holds(conn, ids, actor)
            _check_owner(holds, owner)
            if inactive := [h for h in holds if h.state != ACTIVE]:
                raise _not_active(inactive[0])
            ended = []
            for hold in holds:
                ended.append(await repo.update_hold(conn, hold, now, state=state))
                await repo.move(conn, sku=hold.sku, reason=reason, on_hand_delta=-hold.qty if sold else 0,
                                reserved_delta=-hold.qty, actor=actor, now=now, hold_id=hold.id,
                                order_id=hold.order_id)
            return ended

        return await self._write(operation, key, (ids, owner), work)

    async def release_holds(self, ids: list[str], *, key: str = "", actor: str, owner: str = "") -> list[HoldRecord]:
        """Gives the holds' units back; with `owner`, only if they are still theirs."""
        return await self._end_holds("release_holds", ids, RELEASED, key, actor, owner)

    async def commit_holds(self, ids: list[str], *, key: str = "", actor: str, owner: str = "") -> list[HoldRecord]:
        """Sells the holds' units; refused for any hold that is not active and unexpired (or not `owner`'s)."""
        return await self._end_holds("commit_holds", ids, COMMITTED, key, actor, owner)

    async def extend_holds(self, ids: list[str], owner: str, order_id: str, ttl_seconds: int, *, key: str = "",
                           actor: str, from_owner: str = "") -> list[HoldRecord]:
        """Moves holds to `owner`/`order_id` (empty: no order) until now + ttl; expired ones are held anew if
        their units are free; with from_owner, only holds still that owner's."""
        _check_hold_ids(ids)
        _check_text(owner, "owner")
        if order_id:
            _check_text(order_id, "order_id")
        _check_ttl(ttl_seconds)

        async def work(conn: AsyncConnection) -> list[HoldRecord]:
            # An expired hold already held again stands for its replacement: a retry of the move, with
            # whatever key, moves the replacement (as it would move a hold still active) instead of
            # holding the units twice; read under the locks, so two moves at once cannot both find it unreplaced.
            holds, now = await self._locked_holds(conn, ids, actor, replaced=True)
            _check_owner(holds, from_owner)
            if ended := [h for h in holds if h.state in (COMMITTED, RELEASED)]:
                raise _not_active(ended[0])
            again: dict[str, int] = {}
            for h in holds:
                if h.state == EXPIRED:
                    again[h.sku] = again.get(h.sku, 0) + h.qty
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
                                             order_id=order_id or None, now=now)
                await repo.link_replacement(conn, h.id, new.id)
                await repo.move(conn, sku=h.sku, reason="HOLD", on_hand_delta=0, reserved_delta=h.qty,
                                actor=actor, now=now, hold_id=new.id, order_id=order_id or None)
                result.append(new)
            return result

        return await self._write("extend_holds", key, (ids, owner, order_id, ttl_seconds, from_owner), work)

    async def get_holds(self, ids: list[str]) -> list[HoldRecord]:
        """The holds among `ids`, with their state as of now."""
        ids = _check_uuids(distinct_batch(ids, "hold_ids", MAX_BATCH))
        async with self._pool.connection() as conn:
            found = await repo.get_holds(conn, ids)
            now = await self._clock.db_now(conn)
        return [replace(found[i], state=found[i].state_at(now)) for i in ids if i in found]

    async def active_holds(self, owner_prefix: str, min_age_seconds: int, after: str, limit: int) -> list[HoldRecord]:
        """A page of active holds of owners starting with `owner_prefix`, made min_age_seconds ago or earlier."""
        _check_text(owner_prefix, "owner_prefix")
        if not 1 <= limit <= MAX_BATCH:
            raise invalid_argument("limit", f"limit must be within 1..{MAX_BATCH}")
        if not 0 <= min_age_seconds <= MAX_TTL_SECONDS:
            raise invalid_argument("min_age_seconds", f"min_age_seconds must be within 0..{MAX_TTL_SECONDS}")
        if after:
            _check_uuids([after])
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
        _check_text(sku, "sku")
        async with self._pool.connection() as conn:
            found = await repo.effective_stock(conn, [sku], await self._clock.db_now(conn))
        if sku not in found:
            raise _sku_not_found([sku])
        return found[sku]

    async def set_stock(self, sku: str, on_hand: int, *, key: str = "", actor: str) -> StockRow:
        """Sets the units on hand (creating the SKU's stock); never below what is held."""
        _check_text(sku, "sku")
        if not 0 <= on_hand <= MAX_ON_HAND:
            raise invalid_argument("onHand", f"onHand must be within 0..{MAX_ON_HAND}")

        async def work(conn: AsyncConnection) -> StockRow:
            now = await self._locked_now(conn, [sku], actor)
            row = (await repo.stock_rows(conn, [sku])).get(sku)
            if row is None:
                await repo.create_stock(conn, sku, now)
                row = StockRow(sku, 0, 0)
            if on_hand < row.reserved:
                raise ServiceError(grpc.StatusCode.ABORTED, "BELOW_RESERVED",
                                   f"{row.reserved} units of {sku} are held; on hand cannot go below that",
                                   {"sku": sku, "reserved": row.reserved})
            if on_hand == row.on_hand:
                return row
            return await repo.move_and_read(conn, sku=sku, reason="ADJUST", on_hand_delta=on_hand - row.on_hand,
                                            reserved_delta=0, actor=actor, now=now)

        return await self._write("set_stock", key, (sku, on_hand), work)

    async def sweep_once(self, limit: int = 100) -> int:
        """Reclaims expired holds of up to `limit` SKUs; a SKU whose lock is taken is left to its holder."""
        async with self._pool.connection() as conn:
            skus = await repo.skus_with_expired_holds(conn, await self._clock.db_now(conn), limit)
        reclaimed = 0
        for sku in skus:
            async with self._pool.connection() as conn:
                async with conn.transaction():
                    # Another replica's sweeper, or a write for this SKU, is reclaiming it right now.
                    if await repo.try_lock_sku(conn, sku):
                        now = await self._clock.db_now(conn)
                        reclaimed += (await repo.reclaim_expired(conn, [sku], now, SWEEPER_ACTOR)).rowcount
        return reclaimed
