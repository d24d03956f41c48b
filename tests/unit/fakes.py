"""In-memory stand-ins for the cart's and the order's repositories, pool and the services they call."""

from __future__ import annotations

import inspect
import json
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

import grpc
import psycopg
import pytest

from cart_svc.client import CART_EMPTY, CHECKOUT_NOT_FOUND, HandedLine
from cart_svc.model import CartView, Line
from catalog_svc.client import Product
from inventory_svc.client import ACTIVE, COMMITTED, EXPIRED, RELEASED, Hold, InventoryClient
from order_svc.model import PAID, PENDING, PENDING_PAYMENT, OrderRecord, PaymentAttempt
from order_svc.payments import Charge, ProviderUnavailable
from tests.clock import ManualClock
from shop_runtime.errors import ServiceError, unavailable


# --- checking that a fake still looks like what it stands for -------------------------------------

def public_async_methods(cls: type) -> dict[str, inspect.Signature]:
    """name -> signature of a class's public coroutine methods."""
    return {name: inspect.signature(f) for name, f in vars(cls).items()
            if not name.startswith("_") and inspect.iscoroutinefunction(f)}


def install(monkeypatch, module, fake: object) -> None:
    """Replaces every public async function of a repository module by the fake's method of the same name,
    checking that both take the same parameters (so a changed repository breaks the fake loudly)."""
    for name, func in vars(module).items():
        if name.startswith("_") or not inspect.iscoroutinefunction(func) or func.__module__ != module.__name__:
            continue
        method = getattr(fake, name)
        assert list(inspect.signature(method).parameters) == list(inspect.signature(func).parameters), (
            f"{type(fake).__name__}.{name} does not take the parameters of {module.__name__}.{name}")
        monkeypatch.setattr(module, name, method)


# --- lost answers ---------------------------------------------------------------------------------

class _Losses:
    """Calls that fail on purpose as a caller sees a lost call: UNAVAILABLE / DEPENDENCY_UNAVAILABLE,
    raised after the callee did its work (the answer was lost) or before (the request was)."""

    def __init__(self, service: str):
        self._service = service
        self._losses: dict[str, list[bool]] = {}

    def lose_next(self, method: str, after: bool = True) -> None:
        """The next call of `method` is lost: after its effect (after=True) or before it (after=False)."""
        self._losses.setdefault(method, []).append(after)

    async def _lossy(self, method: str, work: Callable[[], Awaitable[Any]]) -> Any:
        queue = self._losses.get(method)
        after = queue.pop(0) if queue else None
        if after is False:
            raise unavailable(self._service)
        result = await work()
        if after:
            raise unavailable(self._service)
        return result


# --- inventory ------------------------------------------------------------------------------------

def _error(code: grpc.StatusCode, reason: str, message: str, **metadata) -> ServiceError:
    return ServiceError(code, reason, message, metadata)


@dataclass
class _StoredHold:
    hold_id: str
    owner: str
    sku: str
    qty: int
    state: str
    expires_at: datetime
    order_id: str
    created_at: datetime
    replaced_by: str | None = None
    buyer: str | None = None

    def record(self) -> Hold:
        return Hold(self.hold_id, self.owner, self.sku, self.qty, self.state, self.expires_at, self.order_id)


class FakeInventory(_Losses):
    """Inventory as `InventoryClient` shows it: stock per SKU, holds that end once (sold, given back, or
    expired by the ManualClock), all-or-nothing writes, and idempotency keys whose first answer is replayed.

    `calls` lists every write that reached it, as (method, request), replays included."""

    def __init__(self, clock: ManualClock, stock: dict[str, int]):
        super().__init__("inventory")
        self.clock = clock
        self.on_hand = dict(stock)
        self.stored: dict[str, _StoredHold] = {}
        self.calls: list[tuple[str, dict]] = []
        self._answers: dict[tuple[str, str], tuple[dict, Any]] = {}

    # What tests look at.

    def available(self, sku: str) -> int:
        """Units of `sku` that can be held now."""
        self._expire()
        return self.on_hand.get(sku, 0) - sum(h.qty for h in self.stored.values() if h.sku == sku and h.state == ACTIVE)

    def hold_of(self, hold_id: str) -> Hold:
        """A hold as it is now."""
        self._expire()
        return self.stored[hold_id].record()

    def holds_of(self, owner: str) -> list[Hold]:
        """An owner's holds as they are now, in the order they were made."""
        self._expire()
        return [h.record() for h in self.stored.values() if h.owner == owner]

    # The rules.

    def _expire(self) -> None:
        now = self.clock.now()
        for h in self.stored.values():
            if h.state == ACTIVE and h.expires_at <= now:
                h.state = EXPIRED

    def _find(self, hold_ids: list[str]) -> list[_StoredHold]:
        for hold_id in hold_ids:
            if hold_id not in self.stored:
                raise _error(grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND", f"no hold {hold_id}", hold_id=hold_id)
        return [self.stored[i] for i in hold_ids]

    @staticmethod
    def _check_owner(holds: list[_StoredHold], owner: str) -> None:
        for h in holds:
            if owner and h.owner != owner:
                raise _error(grpc.StatusCode.FAILED_PRECONDITION, "HOLD_NOT_OWNED",
                             f"hold {h.hold_id} no longer belongs to {owner}", hold_id=h.hold_id)

    @staticmethod
    def _check_active(holds: list[_StoredHold]) -> None:
        for h in holds:
            if h.state != ACTIVE:
                raise _error(grpc.StatusCode.FAILED_PRECONDITION, "HOLD_NOT_ACTIVE", f"hold {h.hold_id} is {h.state}",
                             hold_id=h.hold_id, state=h.state)

    def _check_stock(self, wanted: dict[str, int]) -> None:
        short = {sku: self.available(sku) for sku, qty in wanted.items() if qty > self.available(sku)}
        if short:
            sku = next(iter(short))
            raise _error(grpc.StatusCode.ABORTED, "OUT_OF_STOCK", f"not enough units of {sku}",
                         sku=sku, available=short[sku], skus=",".join(short))

    def _check_limit(self, sku: str, buyer: str | None, more: int, limit: int) -> None:
        """The per-buyer purchase limit: units held for or sold to the buyer, plus `more`, at most `limit`."""
        if not (limit and buyer and more > 0):
            return
        has = sum(h.qty for h in self.stored.values() if h.sku == sku and h.buyer == buyer
                  and h.state in (ACTIVE, COMMITTED))
        if has + more > limit:
            raise _error(grpc.StatusCode.ABORTED, "PURCHASE_LIMIT", f"at most {limit} units of {sku}",
                         sku=sku, limit=limit, has=has)

    def _new_hold(self, owner: str, sku: str, qty: int, ttl_seconds: int, order_id: str = "",
                  buyer: str | None = None) -> _StoredHold:
        now = self.clock.now()
        hold = _StoredHold(str(uuid.uuid4()), owner, sku, qty, ACTIVE, now + timedelta(seconds=ttl_seconds),
                           order_id, now, buyer=buyer)
        self.stored[hold.hold_id] = hold
        return hold

    def _newest(self, hold_id: str) -> str:
        while (hold := self.stored.get(hold_id)) is not None and hold.replaced_by:
            hold_id = hold.replaced_by
        return hold_id

    async def _write(self, method: str, key: str, request: dict, work: Callable[[], Any]) -> Any:
        """Runs `work` once per key: the same key with the same request replays the first answer."""
        self.calls.append((method, request))

        async def once() -> Any:
            if key and (method, key) in self._answers:
                first, answer = self._answers[(method, key)]
                if first != request:
                    raise _error(grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_REUSED",
                                 "this idempotency key was used for a different request", operation=method)
                return answer
            self._expire()
            answer = work()  # validates everything before it changes anything: all or nothing
            if key:
                self._answers[(method, key)] = (request, answer)
            return answer

        return await self._lossy(method, once)

    # InventoryClient's methods.

    async def hold(self, owner: str, lines: dict[str, int], ttl_seconds: int, key: str, *,
                   user: str | None = None, buyer: str = "", max_units: int = 0) -> list[Hold]:
        def work() -> list[Hold]:
            for sku, qty in lines.items():
                self._check_limit(sku, buyer, qty, max_units)
            self._check_stock(lines)
            return [self._new_hold(owner, sku, qty, ttl_seconds, buyer=buyer or None).record()
                    for sku, qty in lines.items()]

        return await self._write("hold", key, dict(owner=owner, lines=dict(lines), ttl=ttl_seconds, buyer=buyer), work)

    async def resize(self, hold_id: str, ttl_seconds: int, owner: str, key: str, *, qty: int = 0, add: int = 0,
                     max_qty: int = 0, user: str | None = None, max_units: int = 0) -> Hold:
        def work() -> Hold:
            (h,) = self._find([hold_id])
            self._check_owner([h], owner)
            self._check_active([h])
            target = h.qty + add if add else qty
            if max_qty and target > max_qty:
                raise _error(grpc.StatusCode.FAILED_PRECONDITION, "QTY_LIMIT",
                             f"at most {max_qty} units, this one would hold {target}", max=max_qty, qty=target)
            self._check_limit(h.sku, h.buyer, target - h.qty, max_units)
            if target > h.qty:
                self._check_stock({h.sku: target - h.qty})
            h.qty = target
            if ttl_seconds:
                h.expires_at = self.clock.now() + timedelta(seconds=ttl_seconds)
            return h.record()

        return await self._write("resize", key, dict(hold_id=hold_id, ttl=ttl_seconds, owner=owner, qty=qty, add=add,
                                                     max_qty=max_qty), work)

    async def release(self, hold_ids: list[str], owner: str, key: str, *, user: str | None = None) -> list[Hold]:
        def work() -> list[Hold]:
            holds = self._find(hold_ids)
            self._check_owner(holds, owner)
            self._check_active(holds)
            for h in holds:
                h.state = RELEASED
            return [h.record() for h in holds]

        return await self._write("release", key, dict(hold_ids=list(hold_ids), owner=owner), work)

    # The real client's: it only calls release() and reads the refusal.
    release_if_held = InventoryClient.release_if_held

    async def extend(self, hold_ids: list[str], owner: str, order_id: str, ttl_seconds: int, key: str, *,
                     from_owner: str = "", user: str | None = None, max_units: int = 0) -> list[Hold]:
        def work() -> list[Hold]:
            # An expired hold already held again stands for its replacement.
            holds = self._find([self._newest(i) for i in hold_ids])
            self._check_owner(holds, from_owner)
            self._check_active([h for h in holds if h.state != EXPIRED])
            again: dict[str, int] = {}
            for h in holds:
                if h.state == EXPIRED:
                    again[h.sku] = again.get(h.sku, 0) + h.qty
            for h in holds:
                if h.state == EXPIRED:
                    self._check_limit(h.sku, h.buyer, h.qty, max_units)
            self._check_stock(again)
            result = []
            for h in holds:
                if h.state == ACTIVE:
                    h.owner, h.order_id = owner, order_id
                    h.expires_at = self.clock.now() + timedelta(seconds=ttl_seconds)
                    result.append(h.record())
                else:
                    new = self._new_hold(owner, h.sku, h.qty, ttl_seconds, order_id, buyer=h.buyer)
                    h.replaced_by = new.hold_id
                    result.append(new.record())
            return result

        return await self._write("extend", key, dict(hold_ids=list(hold_ids), owner=owner, order_id=order_id,
                                                     ttl=ttl_seconds, from_owner=from_owner), work)

    async def commit(self, hold_ids: list[str], key: str, *, owner: str = "", user: str | None = None) -> list[Hold]:
        def work() -> list[Hold]:
            holds = self._find(hold_ids)
            self._check_owner(holds, owner)
            self._check_active(holds)
            for h in holds:
                h.state = COMMITTED
                self.on_hand[h.sku] -= h.qty
            return [h.record() for h in holds]

        return await self._write("commit", key, dict(hold_ids=list(hold_ids), owner=owner), work)

    async def holds(self, hold_ids: list[str]) -> dict[str, Hold]:
        if not hold_ids:  # as the client: no call at all
            return {}

        async def read() -> dict[str, Hold]:
            self._expire()
            return {i: self.stored[i].record() for i in hold_ids if i in self.stored}

        return await self._lossy("holds", read)

    async def active_holds(self, owner_prefix: str, min_age_seconds: int, after: str = "",
                           limit: int = 200) -> list[Hold]:
        async def read() -> list[Hold]:
            self._expire()
            made_before = self.clock.now() - timedelta(seconds=min_age_seconds)
            found = sorted((h for h in self.stored.values() if h.state == ACTIVE and h.owner.startswith(owner_prefix)
                            and h.created_at <= made_before and h.hold_id > after), key=lambda h: h.hold_id)
            return [h.record() for h in found[:limit]]

        return await self._lossy("active_holds", read)

    async def availability(self, skus: list[str], timeout: float) -> dict[str, int]:
        async def read() -> dict[str, int]:
            return {sku: self.available(sku) for sku in skus}

        return await self._lossy("availability", read)


# --- catalog, cart, provider ------------------------------------------------------------------------

class FakeCatalog(_Losses):
    """Names and prices by SKU; units sold counted once per order."""

    def __init__(self, products: dict[str, Product]):
        super().__init__("catalog")
        self.by_sku = dict(products)
        self.sold: dict[str, int] = {}
        self.orders_counted: list[str] = []

    async def products(self, skus: list[str]) -> dict[str, Product]:
        if not skus:  # as the client: no call at all
            return {}

        async def read() -> dict[str, Product]:
            return {sku: self.by_sku[sku] for sku in skus if sku in self.by_sku}

        return await self._lossy("products", read)

    async def record_sales(self, order_id: str, lines: dict[str, int]) -> bool:
        async def work() -> bool:
            if order_id in self.orders_counted:
                return False
            self.orders_counted.append(order_id)
            for sku, qty in lines.items():
                self.sold[sku] = self.sold.get(sku, 0) + qty
            return True

        return await self._lossy("record_sales", work)


class FakeCart(_Losses):
    """The cart as the order sees it: lines whose units are held in the (fake) inventory for `cart:<user>`,
    handed over once per order id (a repeat answers the stored hand-over)."""

    def __init__(self, inventory: FakeInventory):
        super().__init__("cart")
        self.inventory = inventory
        self.lines: dict[str, list[tuple[str, str, int, str]]] = {}  # user -> (sku, name, price, hold id)
        self.handed: dict[str, tuple[str, list[HandedLine]]] = {}  # order id -> (user, answer)
        self.hand_over_calls = 0

    async def put(self, user: str, sku: str, qty: int, name: str, price: int, ttl_seconds: int = 600) -> Hold:
        """Adds a line to the user's cart, its units held in inventory."""
        (hold,) = await self.inventory.hold(f"cart:{user}", {sku: qty}, ttl_seconds, "")
        self.lines.setdefault(user, []).append((sku, name, price, hold.hold_id))
        return hold

    async def hand_over(self, user: str, order_id: str, ttl_seconds: int, *,
                        replay_only: bool = False) -> list[HandedLine]:
        self.hand_over_calls += 1

        async def work() -> list[HandedLine]:
            if order_id in self.handed:
                return self.handed[order_id][1]
            if replay_only:
                raise _error(grpc.StatusCode.NOT_FOUND, CHECKOUT_NOT_FOUND, f"no cart was handed over to {order_id}",
                             order_id=order_id)
            lines = self.lines.get(user)
            if not lines:
                raise _error(grpc.StatusCode.FAILED_PRECONDITION, CART_EMPTY, "the cart is empty")
            holds = await self.inventory.extend([x[3] for x in lines], f"order:{order_id}", order_id, ttl_seconds,
                                                f"checkout:{order_id}", user=user)
            answer = [HandedLine(sku, h.qty, h.hold_id, h.expires_at, name, price)
                      for (sku, name, price, _), h in zip(lines, holds, strict=True)]
            self.handed[order_id] = (user, answer)
            self.lines[user] = []
            return answer

        return await self._lossy("hand_over", work)


class FakeProvider:
    """A payment provider's books: `tok_visa` (and `tok_timeout`) approve, anything else declines; one charge
    per payment id however often it is asked. `tok_timeout`, or `lose_next_charge()`, loses the answer of a
    charge just booked (ProviderUnavailable), as a timeout after the provider accepted would."""

    APPROVED_TOKENS = frozenset({"tok_visa", "tok_timeout"})

    def __init__(self) -> None:
        self.charges: dict[str, int] = {}  # payment id -> amount, in the order charged
        self.refunded: set[str] = set()
        self.charge_calls = 0
        self._lose = 0

    def lose_next_charge(self) -> None:
        """The next charge is booked, and its answer lost."""
        self._lose += 1

    def standing(self) -> dict[str, int]:
        """Charges not refunded: payment id -> amount."""
        return {p: a for p, a in self.charges.items() if p not in self.refunded}

    async def charge(self, payment_id: str, amount: int, currency: str, method: str, token: str) -> Charge:
        self.charge_calls += 1
        if token not in self.APPROVED_TOKENS:
            return Charge(False, "card declined" if token == "tok_declined" else "unknown card token")
        if payment_id in self.charges:
            return Charge(True)
        self.charges[payment_id] = amount
        if token == "tok_timeout" or self._lose:
            self._lose = max(0, self._lose - 1)
            raise ProviderUnavailable(f"no answer for {payment_id}")
        return Charge(True)

    async def refund(self, payment_id: str) -> None:
        if payment_id in self.charges:
            self.refunded.add(payment_id)

    async def charged(self, payment_id: str) -> bool:
        return payment_id in self.charges and payment_id not in self.refunded


# --- pool, connections, repositories --------------------------------------------------------------

class FakeConnection:
    """A connection whose transaction() undoes, when an exception leaves it, the repository writes made
    through it inside it. Writes outside a transaction (the order's side connection) stand at once."""

    def __init__(self) -> None:
        self._undo: list[list[Callable[[], None]]] = []

    @asynccontextmanager
    async def transaction(self):
        self._undo.append([])
        try:
            yield self
        except BaseException:
            for undo in reversed(self._undo.pop()):
                undo()
            raise
        done = self._undo.pop()
        if self._undo:  # a savepoint: its writes are the outer transaction's now
            self._undo[-1].extend(done)

    @asynccontextmanager
    async def pipeline(self):
        """Pipeline mode changes when statements travel, not what they do: nothing to fake."""
        yield self

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Remembers how to undo a write, if a transaction is open."""
        if self._undo:
            self._undo[-1].append(undo)

    async def __aenter__(self) -> "FakeConnection":
        return self

    async def __aexit__(self, *exc) -> None:
        return None


class FakePool:
    """A pool whose connection() yields a new FakeConnection; `side()` stands in for Orders._side."""

    @asynccontextmanager
    async def connection(self):
        yield FakeConnection()

    async def side(self) -> FakeConnection:
        return FakeConnection()


class _Tables:
    """Writes that a FakeConnection's transaction can undo."""

    @staticmethod
    def _put(conn: FakeConnection, table: dict, key, value) -> None:
        had, old = key in table, table.get(key)
        table[key] = value
        conn.on_rollback(lambda: table.__setitem__(key, old) if had else table.pop(key, None))

    @staticmethod
    def _drop(conn: FakeConnection, table: dict, key) -> None:
        if key in table:
            old = table.pop(key)
            conn.on_rollback(lambda: table.__setitem__(key, old))


class FakeCartRepository(_Tables):
    """cart_svc.repository in memory."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Line] = {}  # (user, sku) -> line
        self.checkouts: dict[str, tuple[str, bytes]] = {}  # order id -> (user, answer)
        self.changes: dict[tuple[str, str], tuple[bytes, dict]] = {}  # (user, key) -> (request hash, view json)

    async def lock_user(self, conn, user):
        pass

    async def lines(self, conn, user):
        return sorted((x for (u, _), x in self.rows.items() if u == user), key=lambda x: (x.added_at, x.sku))

    async def read_cart(self, conn, user, key):
        return (await self.change(conn, user, key) if key else None), await self.lines(conn, user)

    async def place_line(self, conn, user, line, prior_hold_id):
        old = self.rows.get((user, line.sku))
        if (old.hold_id if old is not None else None) != prior_hold_id:
            return False
        await self.put_line(conn, user, line)
        return True

    async def put_line(self, conn, user, line):
        if (old := self.rows.get((user, line.sku))) is not None:
            line = replace(line, added_at=old.added_at)
        self._put(conn, self.rows, (user, line.sku), line)

    async def delete_lines(self, conn, user, skus):
        for sku in skus:
            self._drop(conn, self.rows, (user, sku))

    async def checkout(self, conn, order_id):
        return self.checkouts.get(order_id)

    async def record_checkout(self, conn, order_id, user, response):
        assert order_id not in self.checkouts, "cart.checkouts has order_id as its primary key"
        self._put(conn, self.checkouts, order_id, (user, response))

    async def change(self, conn, user, key):
        row = self.changes.get((user, key))
        return (row[0], CartView.from_json(row[1])) if row else None

    async def record_change(self, conn, user, key, request_hash, view):
        assert (user, key) not in self.changes, "cart.changes has (user_id, key) as its primary key"
        self._put(conn, self.changes, (user, key), (request_hash, json.loads(json.dumps(view.to_json()))))

    async def line_with_hold(self, conn, user, hold_id):
        return any(u == user and x.hold_id == hold_id for (u, _), x in self.rows.items())


@dataclass(frozen=True)
class _AttemptRow:
    user: str
    key: str
    attempt: PaymentAttempt
    created_at: datetime
    seq: int


class FakeOrderRepository(_Tables):
    """order_svc.repository in memory; `created_at` defaults from the clock, as the tables' now() would."""

    def __init__(self, clock: ManualClock):
        self.clock = clock
        self.orders: dict[str, OrderRecord] = {}
        self.checkout_keys: dict[tuple[str, str], str] = {}  # (user, checkout key) -> order id
        self.checkouts: dict[str, tuple[str, str | None, datetime]] = {}  # order id -> (user, key, created_at)
        self.payments: dict[tuple[str, str], _AttemptRow] = {}
        self.outbox: dict[str, tuple[bytes, bool]] = {}  # order id -> (payload, delivered)

    def attempts_of(self, order_id: str) -> list[PaymentAttempt]:
        """An order's payment attempts, oldest first."""
        rows = sorted((r for r in self.payments.values() if r.attempt.order_id == order_id), key=lambda r: r.seq)
        return [r.attempt for r in rows]

    async def get_order(self, conn, order_id, user, *, for_update=False):
        order = self.orders.get(order_id)
        return order if order is not None and order.user_id == user else None

    async def order_by_checkout_key(self, conn, user, key):
        order_id = self.checkout_keys.get((user, key))
        return self.orders[order_id] if order_id else None

    async def list_orders(self, conn, user, limit, offset):
        mine = sorted((o for o in self.orders.values() if o.user_id == user), key=lambda o: o.id)
        mine.sort(key=lambda o: o.created_at, reverse=True)
        return mine[offset:offset + limit], len(mine)

    async def insert_order(self, conn, order, checkout_key):
        if order.id in self.orders or (checkout_key and (order.user_id, checkout_key) in self.checkout_keys):
            return
        self._put(conn, self.orders, order.id, replace(order, items=list(order.items)))
        if checkout_key:
            self._put(conn, self.checkout_keys, (order.user_id, checkout_key), order.id)

    async def set_hold_ids(self, conn, order_id, hold_ids):
        order = self.orders[order_id]
        items = [replace(item, hold_id=h) for item, h in zip(order.items, hold_ids, strict=True)]
        self._put(conn, self.orders, order_id, replace(order, items=items))

    async def mark_paid(self, conn, order_id, payment_id, now):
        self._put(conn, self.orders, order_id, replace(self.orders[order_id], status=PAID, payment_id=payment_id,
                                                       paid_at=now))

    async def mark_expired(self, conn, order_id):
        if self.orders[order_id].status == PENDING_PAYMENT:
            self._put(conn, self.orders, order_id, replace(self.orders[order_id], status="EXPIRED"))

    async def due_orders(self, conn, now, limit):
        due = sorted((o for o in self.orders.values() if o.status == PENDING_PAYMENT and o.pay_before <= now),
                     key=lambda o: o.pay_before)
        return [(o.id, o.user_id) for o in due[:limit]]

    async def lock_order(self, conn, order_id):
        return self.orders.get(order_id)

    async def orders_with_stale_attempts(self, conn, now, min_age_seconds, limit):
        made_before = now - timedelta(seconds=min_age_seconds)
        stale = {r.attempt.order_id: None for r in sorted(self.payments.values(), key=lambda r: r.seq)
                 if r.attempt.state == PENDING and r.created_at <= made_before}
        return list(stale)[:limit]

    async def add_checkout(self, conn, order_id, user, key):
        if order_id not in self.checkouts:
            self._put(conn, self.checkouts, order_id, (user, key, self.clock.now()))

    async def unfinished_checkouts(self, conn, now, min_age_seconds, limit):
        made_before = now - timedelta(seconds=min_age_seconds)
        rows = sorted(((c[2], order_id, c[0], c[1]) for order_id, c in self.checkouts.items()
                       if c[2] <= made_before and order_id not in self.orders))
        return [(order_id, user, key) for _, order_id, user, key in rows[:limit]]

    async def drop_checkout(self, conn, order_id):
        self._drop(conn, self.checkouts, order_id)

    async def checkouts_among(self, conn, order_ids):
        return {i for i in order_ids if i in self.checkouts}

    async def orders_by_id(self, conn, order_ids):
        return {i: self.orders[i].status for i in order_ids if i in self.orders}

    async def attempt(self, conn, user, key):
        row = self.payments.get((user, key))
        return row.attempt if row else None

    async def pending_attempts(self, conn, order_id):
        return [a.payment_id for a in self.attempts_of(order_id) if a.state == PENDING]

    async def insert_attempt(self, conn, user, key, a):
        if (user, key) in self.payments or any(r.attempt.payment_id == a.payment_id for r in self.payments.values()):
            raise psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")
        row = _AttemptRow(user, key, replace(a, state=PENDING), self.clock.now(), len(self.payments))
        self._put(conn, self.payments, (user, key), row)

    async def set_attempt_state(self, conn, payment_id, state):
        for k, row in list(self.payments.items()):
            if row.attempt.payment_id == payment_id:
                self._put(conn, self.payments, k, replace(row, attempt=replace(row.attempt, state=state)))

    async def add_outbox(self, conn, order_id, payload):
        if order_id not in self.outbox:
            self._put(conn, self.outbox, order_id, (payload, False))

    async def pending_outbox(self, conn, limit):
        return [(order_id, payload) for order_id, (payload, delivered) in self.outbox.items() if not delivered][:limit]

    async def mark_delivered(self, conn, order_id):
        self._put(conn, self.outbox, order_id, (self.outbox[order_id][0], True))


async def refused(reason: str, call) -> ServiceError:
    """The ServiceError `call` raises, which must have `reason`."""
    with pytest.raises(ServiceError) as caught:
        await call
    assert caught.value.reason == reason, caught.value.message
    return caught.value


def assert_fakes_match(*pairs: tuple[type, type]) -> None:
    """Each fake offers every public async method of its real counterpart, with the same parameters."""
    for fake, real in pairs:
        theirs, ours = public_async_methods(real), public_async_methods(fake)
        assert set(theirs) <= set(ours), f"{fake.__name__} lacks {set(theirs) - set(ours)}"
        for name, signature in theirs.items():
            assert list(ours[name].parameters) == list(signature.parameters), f"{fake.__name__}.{name}"
