"""The cart's rules: every line's units held in inventory, all or nothing, one user's changes at a time."""

from __future__ import annotations

import asyncio
import logging
import uuid

from psycopg_pool import AsyncConnectionPool

from cart_svc import repository as repo
from cart_svc.model import (MAX_LINE_QTY, CartView, HandedLine, Line, change_key, gone_from_cart, handed_line,
                            owner_of, total_of, user_of, view_of)
from catalog_svc.client import CatalogClient, Product
from inventory_svc.client import ACTIVE, EXPIRED, HOLD_GONE, Hold, InventoryClient
from shop_runtime import idempotency
from shop_runtime.clock import Clock
from shop_runtime.errors import ServiceError, invalid_argument
from shop_runtime.live_settings import LiveSettings
from shop_runtime import metrics
from shop_runtime.reasons import STATE_REASONS, refuse
from shop_runtime.validation import CURRENCY, MAX_TOTAL

# The highest unit price a storefront may expect (a product's price is at most this).
MAX_EXPECTED_PRICE = 2_000_000_000

_LOGGER = logging.getLogger(__name__)

# A cart hold nobody refers to is given back once it is this old: older than any change still under way.
ORPHAN_AGE_SECONDS = 60


def _qty_limit(qty: int) -> ServiceError:
    return refuse("QTY_LIMIT", f"a line holds at most {MAX_LINE_QTY} units, this one would hold {qty}",
                  {"max": MAX_LINE_QTY, "qty": qty})


def _reused() -> ServiceError:
    return refuse("IDEMPOTENCY_KEY_REUSED", "this idempotency key was used for a different cart change")


def _shown(view: CartView) -> CartView:
    """The cart as answered, at the prices its units were held at: one that totals more than MAX_TOTAL (new units
    held at a price above the catalog's the cap was checked with, or old lines shown at a risen catalog price) is
    refused, as the state the cart is in, whatever the change did."""
    if view.total > MAX_TOTAL:
        raise refuse("TOTAL_LIMIT", f"the cart totals more than {MAX_TOTAL} {CURRENCY}; lower a quantity",
                     {"max": MAX_TOTAL}, table=STATE_REASONS)
    return view


def _expected(expected_price: int) -> int:
    """A change's expected unit price, checked: 0 (none) or 1..MAX_EXPECTED_PRICE."""
    if not 0 <= expected_price <= MAX_EXPECTED_PRICE:
        raise invalid_argument("expectedPrice", f"expectedPrice must be within 1..{MAX_EXPECTED_PRICE}, or 0 for none")
    return expected_price


def _fingerprint(operation: str, sku: str, qty: int, expected_price: int) -> bytes:
    """A change's request hash: the same key with another expected price is another request. A change without one
    hashes as it did before prices were held, so its stored answer still replays."""
    return idempotency.fingerprint(operation, sku, qty, *([expected_price] if expected_price else []))


def _replayed(earlier: tuple[bytes, CartView], request_hash: bytes) -> CartView:
    """The first answer of a change made under the same key; the key with another request is refused."""
    stored_hash, view = earlier
    if stored_hash != request_hash:
        raise _reused()
    return view


class _TakeBack(Exception):
    """A line's hold was moved to an order by a checkout cut off inside this cart: taking it back is decided under
    the user's lock (the one path that holds it across calls, see Carts._change_locked)."""


class _LineMoved(Exception):
    """Another change of the same line got in between this change's read and its write."""

    def __init__(self, hold: Hold):
        super().__init__(hold.hold_id)
        self.hold = hold


class Carts:
    """Carts in the cart schema; their holds in inventory (the truth of a line's units); names and prices
    from the catalog.

    A change sends inventory an idempotency key derived from the change (the shopper's Idempotency-Key,
    else one made for the request), so the inventory client's retries after a lost answer take effect
    once; an add grows the hold by its units (decided on the hold's own quantity), so a change whose
    answer never came back is not undone or doubled by the next one; the view and the checkout take
    quantities from the holds; a hold made for a change that never reached its line is found by the
    reconciler and given back.

    A change holds no lock or transaction while it waits for another service: it reads the cart once,
    asks the catalog once (names and prices) and inventory once (the line's hold, with the other lines'
    holds read alongside), then writes the line in a short transaction under the user's lock, only if
    the line is still as it read it (another change of the same line in between sends it round again
    under the lock). The answer is built from what these calls returned.
    """

    def __init__(self, pool: AsyncConnectionPool, inventory: InventoryClient, catalog: CatalogClient,
                 live: LiveSettings, clock: Clock, reconcile_age_seconds: int = ORPHAN_AGE_SECONDS):
        self._reconcile_age = reconcile_age_seconds
        self._pool = pool
        self._inventory = inventory
        self._catalog = catalog
        self._live = live
        self._clock = clock

    async def _prices(self, skus: list[str], units: list[tuple[str, int, int]], required: list[str], *,
                      known: dict[str, Product] | None = None, checkout: bool = False) -> dict[str, Product]:
        """The one read of names and prices and its checks: `skus` asked of the catalog in one call (those `known`
        from a read moments before are not asked again); PRODUCT_NOT_FOUND when one of `required` is not in the
        catalog, TOTAL_LIMIT when the cart would then total more than MAX_TOTAL (`units`: (sku, qty, held price)
        triples, a price of 0 counting at the catalog's, those without either counting nothing)."""
        products = await self._catalog.products([s for s in skus if s not in known] if known else skus)
        if known:
            products = known | products
        if gone := [s for s in required if s not in products]:
            if checkout:
                raise refuse("PRODUCT_NOT_FOUND", "no longer in the catalog: " + ", ".join(gone), {"sku": gone[0]})
            raise refuse("PRODUCT_NOT_FOUND", f"no product {gone[0]!r}", {"sku": gone[0]})
        if total_of(units, products) > MAX_TOTAL:
            raise refuse("TOTAL_LIMIT", f"an order totals at most {MAX_TOTAL} {CURRENCY}; lower a quantity"
                         if checkout else f"a cart totals at most {MAX_TOTAL} {CURRENCY}", {"max": MAX_TOTAL})
        return products

    async def _change_prices(self, sku: str, lines: list[Line], *, add: int, qty: int,
                             known: dict[str, Product] | None = None) -> dict[str, Product]:
        """The prices a change of `sku`'s line is decided at, checked. The line limit is decided on the hold's own
        quantity, by inventory (max_qty) or in _hold; the cap on the total, on the cart's record of its lines: units
        held at the prices the cart recorded for their holds, new units at the catalog's (the price they will be
        held at is inventory's to decide; the answer, _shown, checks the cart again at the held prices)."""
        line = next((x for x in lines if x.sku == sku), None)
        wanted = min(qty or add + (line.qty if line else 0), MAX_LINE_QTY)
        kept = min(line.qty, wanted) if line is not None else 0
        # A line whose hold ran out (as far as the cart knows) is held anew, at the price of now.
        held = line.price if line is not None and line.reserved_until > self._clock.now() else 0
        units = [(sku, kept, held), (sku, wanted - kept, 0)]
        products = await self._prices(sorted({x.sku for x in lines} | {sku}),
                                      units + [(x.sku, x.qty, x.price) for x in lines if x.sku != sku], [sku],
                                      known=known)
        if line is None and not products[sku].listed:  # out of sale: no new line; a line the cart has goes on
            raise refuse("PRODUCT_NOT_FOUND", f"no product {sku!r}", {"sku": sku})
        return products

    async def _hold(self, user: str, sku: str, line: Line | None, change: str, *, price: int, expected: int = 0,
                    add: int = 0, qty: int = 0, take_back: bool = False) -> Hold:
        """Makes the line hold `qty` units, or `add` more: on its hold (which keeps its price and source: inventory
        decides), or a new hold if it has none any more, whose price inventory decides now (`price`: the catalog's
        regular price as read; `expected`: the price the storefront showed, PRICE_CHANGED if the units cannot be
        held at it). A hold a cut-off checkout moved to an order is taken back only with `take_back` (under the
        user's lock). Inventory's refusals (OUT_OF_STOCK, PRICE_CHANGED, SALE_SOLD_OUT, SALE_ENDED,
        PURCHASE_LIMIT) go to the caller as they are, with nothing written."""
        ttl = self._live.get("reservation_ttl_seconds")
        limit = self._live.get("max_units_per_user")

        async def resize(hold_id: str, step: str) -> Hold | None:
            """The hold resized as asked; None when it is no longer the cart's active hold."""
            try:
                return await self._inventory.resize(hold_id, ttl, owner_of(user), change_key(user, change, step),
                                                    qty=qty, add=add, max_qty=MAX_LINE_QTY, user=user,
                                                    max_units=limit, expected_price=expected, price=price)
            except ServiceError as err:
                if err.reason == "QTY_LIMIT":
                    raise _qty_limit(int(err.metadata.get("qty", 0))) from None
                if err.reason not in HOLD_GONE:
                    raise
                return None

        # Each step's key names the change and the hold it works on: the same change sent again (a storefront's
        # resend, or this change going round again under the lock) sends the same key for the same hold, and
        # inventory answers it once.
        if line is not None and (resized := await resize(line.hold_id, f"resize:{line.hold_id}")) is not None:
            return resized
        gone = (await self._inventory.holds([line.hold_id])).get(line.hold_id) if line is not None else None
        if gone is not None and gone.state == ACTIVE and gone.owner.startswith("order:"):
            # Moved to an order by a checkout cut off inside this cart (which never recorded it, so that order
            # was never stored): still the line's units. Taken back, then changed as asked.
            if not take_back:
                raise _TakeBack()
            try:
                await self._inventory.extend([gone.hold_id], owner_of(user), "", ttl,
                                             change_key(user, change, f"take-back:{gone.hold_id}"),
                                             from_owner=gone.owner, user=user)
            except ServiceError as err:
                if err.reason not in HOLD_GONE:
                    raise
            else:
                if (resized := await resize(gone.hold_id, f"resize-back:{gone.hold_id}")) is not None:
                    return resized
        # No line, or its hold expired (the line's units are held anew, as many as its hold had), or its hold
        # was released or sold by a change whose answer was lost (only what is asked is held).
        units = qty or add + (gone.qty if gone is not None and gone.state == EXPIRED else 0)
        if units > MAX_LINE_QTY:
            raise _qty_limit(units)
        prior = line.hold_id if line is not None else "none"
        # The step's key names the regular price too: inventory fingerprints it, so a resend of this change that
        # reads another price (an admin changed it after the first try's answer was lost) is a new hold rather
        # than a refusal of the shopper's own key; the first try's hold, which no line names, is the
        # reconciler's to give back.
        (hold,) = await self._inventory.hold(owner_of(user), {sku: units}, ttl,
                                             change_key(user, change, f"create:{prior}:{price}"), user=user,
                                             buyer=user, max_units=limit, prices={sku: price},
                                             expected_prices={sku: expected} if expected else None)
        return hold

    async def _holds_of(self, lines: list[Line]) -> dict[str, Hold]:
        return await self._inventory.holds([x.hold_id for x in lines])

    async def _read_for_change(self, user: str, sku: str, key: str
                               ) -> tuple[tuple[bytes, CartView] | None, list[Line], Line | None, list[Line]]:
        """A change's one read of the cart: (its key's earlier change, the lines, the line of `sku`, the others)."""
        async with self._pool.connection() as conn:
            earlier, lines = await repo.read_cart(conn, user, key)
        line = next((x for x in lines if x.sku == sku), None)
        return earlier, lines, line, [x for x in lines if x.sku != sku]

    async def _durable(self) -> None:
        """The durability barrier of a replay read outside a transaction (shop_runtime.idempotency): returns once a
        synchronous standby has every commit this process has seen, the replayed change's among them."""
        async with self._pool.connection() as conn, conn.transaction():
            await idempotency.durability_barrier(conn)

    async def _change(self, user: str, sku: str, key: str, request_hash: bytes, *, add: int = 0,
                      qty: int = 0, expected: int = 0) -> CartView:
        key = idempotency.check_key(key)
        earlier, lines, line, others = await self._read_for_change(user, sku, key)
        if earlier is not None:
            await self._durable()
            return _replayed(earlier, request_hash)
        # The other lines' holds, for the answer, are read while the catalog and the change are under way.
        reading = asyncio.ensure_future(self._holds_of(others))
        try:
            products = await self._change_prices(sku, lines, add=add, qty=qty)
            change = key or uuid.uuid4().hex
            try:
                hold = await self._hold(user, sku, line, change, price=products[sku].price, expected=expected,
                                        add=add, qty=qty)
            except _TakeBack:
                return await self._change_locked(user, sku, key, request_hash, change, products, add=add, qty=qty,
                                                 expected=expected)
            held = await reading
        finally:
            if not reading.done():
                reading.cancel()
        if hold.replayed:  # the stored answer of this change's first try: the hold may have changed since
            hold = (await self._inventory.holds([hold.hold_id])).get(hold.hold_id, hold)
        added_at = line.added_at if line is not None else self._clock.now()
        placed = Line(sku, hold.qty, hold.hold_id, hold.expires_at, added_at, hold.price)
        view = view_of(sorted([*others, placed], key=lambda x: (x.added_at, x.sku)), held | {hold.hold_id: hold},
                        products)
        prior = line.hold_id if line is not None else None
        try:
            async with self._pool.connection() as conn:
                if not key:  # one statement, the user's lock its first step: one round trip
                    wrote = await repo.place_line(conn, user, placed, prior)
                else:
                    # Pipeline mode: the lock, the check and the write go out together; the record with the COMMIT.
                    async with conn.pipeline(), conn.transaction():
                        await repo.lock_user(conn, user)
                        if (earlier := await repo.change(conn, user, key)) is not None:
                            await idempotency.durability_barrier(conn)
                            return _replayed(earlier, request_hash)  # the same change sent twice at once: done first
                        wrote = await repo.place_line(conn, user, placed, prior)
                        if wrote or hold.hold_id == prior:
                            await repo.record_change(conn, user, key, request_hash, view)
                if not wrote and hold.hold_id != prior:
                    # A new hold for a line another change wrote meanwhile: this one goes round again.
                    raise _LineMoved(hold)
        except _LineMoved as moved:
            return await self._change_locked(user, sku, key, request_hash, change, products, add=add, qty=qty,
                                             expected=expected, made=(moved.hold, prior))
        return view

    async def _change_locked(self, user: str, sku: str, key: str, request_hash: bytes, change: str,
                             known: dict[str, Product], *, add: int = 0, qty: int = 0, expected: int = 0,
                             made: tuple[Hold, str | None] | None = None) -> CartView:
        """A change decided under the user's lock, held across its calls: for what the lock-free path cannot
        settle alone (taking a line's hold back from a cut-off checkout, or a line changed by another request
        while this one was under way). Rare: it follows a cut-off or two changes of one line at once.

        `made`: the hold the lock-free try made for a line it then found changed, and the line's hold it had read.
        It becomes the line if the line is as that try read it again (or a resend of the change placed it);
        else the change is made on the line as it is now, and the hold given back.

        `known`: the names and prices the lock-free try read, moments before: only a SKU it did not know (a line
        added meanwhile) is asked of the catalog, so the change still reads the catalog once."""
        async with self._pool.connection() as conn, conn.transaction():
            await repo.lock_user(conn, user)
            if key and (earlier := await repo.change(conn, user, key)) is not None:
                await idempotency.durability_barrier(conn)
                return _replayed(earlier, request_hash)
            lines = await repo.lines(conn, user)
            line = next((x for x in lines if x.sku == sku), None)
            products = await self._change_prices(sku, lines, add=add, qty=qty, known=known)
            current = line.hold_id if line is not None else None
            if made is not None and current in (made[1], made[0].hold_id):
                hold = made[0]
            else:
                hold = await self._hold(user, sku, line, change, price=products[sku].price, expected=expected,
                                        add=add, qty=qty, take_back=True)
                if made is not None:
                    await self._inventory.release_if_held(made[0].hold_id, owner_of(user),
                                                          change_key(user, change, f"undo:{made[0].hold_id}"),
                                                          user=user)
            added_at = line.added_at if line is not None else self._clock.now()
            await repo.put_line(conn, user, Line(sku, hold.qty, hold.hold_id, hold.expires_at, added_at, hold.price))
            lines = await repo.lines(conn, user)
            view = view_of(lines, await self._holds_of(lines), products)
            if key:
                await repo.record_change(conn, user, key, request_hash, view)
        return view

    async def add(self, user: str, sku: str, qty: int, key: str = "", *, expected_price: int = 0) -> CartView:
        """Adds `qty` units of `sku`, holding them; the line grows if it exists (at its price). With
        expected_price, the units must be held at that price (PRICE_CHANGED). A key replays its first answer."""
        if not 1 <= qty <= MAX_LINE_QTY:
            raise invalid_argument("qty", f"qty must be within 1..{MAX_LINE_QTY}")
        if not sku:
            raise invalid_argument("sku", "sku is required")
        expected = _expected(expected_price)
        return _shown(await self._change(user, sku, key, _fingerprint("add", sku, qty, expected), add=qty,
                                         expected=expected))

    async def set_quantity(self, user: str, sku: str, qty: int, key: str = "", *,
                           expected_price: int = 0) -> CartView:
        """Sets the line to exactly `qty` units; 0 removes it and gives its units back (expected_price ignored)."""
        if not 0 <= qty <= MAX_LINE_QTY:
            raise invalid_argument("qty", f"qty must be within 0..{MAX_LINE_QTY}")
        expected = _expected(expected_price)
        if qty > 0:
            return _shown(await self._change(user, sku, key, _fingerprint("set", sku, qty, expected), qty=qty,
                                             expected=expected))
        return _shown(await self._remove(user, sku, key))

    async def _remove(self, user: str, sku: str, key: str) -> CartView:
        key = idempotency.check_key(key)
        request_hash = idempotency.fingerprint("set", sku, 0)
        # Under the user's lock, held across the release: a removal ends a hold, which a checkout moving the
        # cart's holds at that moment, or a lock-free add re-holding an expired line, must not find ended
        # half-way. Removals are not what a flash-sale crowd sends; adds are, and they hold no lock.
        async with self._pool.connection() as conn, conn.transaction():
            await repo.lock_user(conn, user)
            if key and (earlier := await repo.change(conn, user, key)) is not None:
                await idempotency.durability_barrier(conn)
                return _replayed(earlier, request_hash)
            line = next((x for x in await repo.lines(conn, user) if x.sku == sku), None)
            if line is not None:
                # A hold that expired or ended has given its units back already.
                await self._inventory.release_if_held(line.hold_id, owner_of(user),
                                                      change_key(user, key or uuid.uuid4().hex, "release"), user=user)
                await repo.delete_lines(conn, user, [sku])
            view = await self._view(await repo.lines(conn, user))
            if key:
                await repo.record_change(conn, user, key, request_hash, view)
        return view

    async def view(self, user: str) -> CartView:
        """The cart: units, expiry and prices from the holds, current names from the catalog."""
        async with self._pool.connection() as conn:
            lines = await repo.lines(conn, user)
        return _shown(await self._view(lines))

    async def _read(self, lines: list[Line]) -> tuple[dict[str, Hold], dict[str, Product]]:
        """The lines' holds and products, asked of inventory and the catalog at the same time."""
        holds, products = await asyncio.gather(self._holds_of(lines),
                                               self._catalog.products([x.sku for x in lines]))
        return holds, products

    async def _view(self, lines: list[Line]) -> CartView:
        return view_of(lines, *await self._read(lines))

    async def checkout(self, user: str, order_id: str, ttl_seconds: int,
                       replay_only: bool = False) -> list[HandedLine]:
        """Moves every line's hold to the order and empties the cart, or changes nothing; the units handed
        over are the holds' own. The same order id answers the same, however often it is sent."""
        if not order_id:
            raise invalid_argument("order_id", "order_id is required")
        async with self._pool.connection() as conn, conn.transaction():
            await repo.lock_user(conn, user)
            if (earlier := await repo.checkout(conn, order_id)) is not None:
                owner, stored = earlier
                if owner != user:
                    raise invalid_argument("order_id", "this order id belongs to another cart")
                await idempotency.durability_barrier(conn)
                return stored
            if replay_only:
                raise refuse("CHECKOUT_NOT_FOUND", f"no cart was handed over to order {order_id}",
                             {"order_id": order_id})
            lines = await repo.lines(conn, user)
            # Lines whose units an earlier change (its answer lost) gave back or that went elsewhere are
            # not the cart's any more: they are dropped, not handed over.
            holds = await self._inventory.holds([line.hold_id for line in lines])
            if dead := [x.sku for x in lines if x.hold_id in holds and gone_from_cart(holds[x.hold_id])]:
                await repo.delete_lines(conn, user, dead)
                lines = [line for line in lines if line.sku not in dead]
            if not lines:
                raise refuse("CART_EMPTY", "the cart is empty")
            # Names are fixed, and the total checked at the held prices, before any hold moves: a refusal leaves
            # the cart as it was.
            skus = [line.sku for line in lines]
            units = [(x.sku, holds[x.hold_id].qty if x.hold_id in holds else x.qty,
                      holds[x.hold_id].price if x.hold_id in holds else x.price) for x in lines]
            products = await self._prices(skus, units, skus, checkout=True)
            # The moved holds come back one per line, in the lines' order (an expired one held again has a new
            # id); `holds` above is the by-id lookup of the holds as they were, a different thing.
            moved = await self._inventory.extend([line.hold_id for line in lines], f"order:{order_id}", order_id,
                                                 ttl_seconds, f"checkout:{order_id}", user=user,
                                                 max_units=self._live.get("max_units_per_user"))
            # Each line keeps the price and campaign of its hold (one held again after it expired keeps them:
            # inventory's rule; SALE_ENDED or SALE_SOLD_OUT above when it cannot). A hold with no price (made
            # before prices were held) is ordered at the catalog's price, as the cart showed it.
            handed = [handed_line(line, hold, holds.get(line.hold_id), products[line.sku])
                      for line, hold in zip(lines, moved, strict=True)]
            await repo.delete_lines(conn, user, skus)
            await repo.record_checkout(conn, order_id, user, handed)
            return handed

    async def reconcile(self, limit: int = 200) -> int:
        """Gives back cart holds that no line refers to (a change cut off between inventory and the cart);
        safe in every replica: each hold is judged under its user's lock and released with one key."""
        repaired = 0
        after = ""
        while True:
            page = await self._inventory.active_holds("cart:", self._reconcile_age, after, limit)
            for hold in page:
                user = user_of(hold.owner)
                if user is None:
                    continue
                async with self._pool.connection() as conn, conn.transaction():
                    await repo.lock_user(conn, user)
                    if await repo.line_with_hold(conn, user, hold.hold_id) or not await \
                            self._inventory.release_if_held(hold.hold_id, hold.owner, f"reconcile:{hold.hold_id}"):
                        continue
                metrics.repaired("cart", "orphan_cart_hold", "released hold %s (%d x %s of %s), no cart line refers to it",
                                 hold.hold_id, hold.qty, hold.sku, user)
                repaired += 1
            if len(page) < limit:
                return repaired
            after = page[-1].hold_id
