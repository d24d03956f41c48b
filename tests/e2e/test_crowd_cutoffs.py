"""A crowd through Envoy: 40 shoppers on one hot SKU abandon requests at random moments and click again.

Every shopper runs a random script (add, maybe change the line, check out, pay). About half of the
requests are abandoned by the client after 1-300 ms and sent again, with the same Idempotency-Key or a
new one, as a person clicking again would. Once every hold and payment window has run out the books
must agree: the units that left stock are the units of paid orders and the units the catalog counts as
sold, nothing is still held (nor shown as held in a cart), each paid order has one standing charge and no
other order has any, no shopper was told something the books contradict, and no answer was a 5xx.

The scripts are seeded: CROWD_SEED=<seed> replays a run's scripts (timing still varies).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest

from tests.audit import audit_dsn
from tests.e2e.shop_client import seconds

SKU = "HO-0138"  # the hot item; no other test uses it
PROBE_SKU = "FA-0137"  # what the throwaway shopper buys while the live settings are awaited; no other test uses it
UNITS = 25
SHOPPERS = 40
RESERVATION_TTL = 6
PAYMENT_WINDOW = 8
NORMAL_TIMEOUT = 30.0
CUT_OFF_SHARE = 0.5  # of the requests are abandoned ...
CUT_OFF_AFTER = (0.001, 0.3)  # ... after this many seconds
# Long enough for every window (at most PAYMENT_WINDOW after the last checkout) and the sweepers after it.
SETTLE_SECONDS = 60
# The crowd normally shops in a few seconds; a shopper still waiting after this is stuck (Envoy answers 504 at 15 s).
CROWD_SECONDS = 90
# Business answers after which a shopper stops.
STOPS = {(409, "OUT_OF_STOCK"), (409, "ORDER_EXPIRED"), (400, "CART_EMPTY")}


def reason_of(resp: httpx.Response) -> str:
    """The ErrorInfo reason of an answer, or '' when it has none (a 2xx, a body that is not the error shape)."""
    try:
        return next((d["reason"] for d in resp.json().get("details", ()) if "reason" in d), "")
    except (ValueError, AttributeError, TypeError):
        return ""


def describe(resp: httpx.Response) -> str:
    return f"{resp.status_code} {reason_of(resp) or resp.text[:200]!r}"


@dataclass
class Answer:
    """The answer a shopper finally got to one click."""

    resp: httpx.Response
    cut: bool = False  # the first try was abandoned and this is the answer to the click again
    new_key: bool = False  # ... which carried a new Idempotency-Key

    @property
    def status(self) -> int:
        return self.resp.status_code

    @property
    def reason(self) -> str:
        return reason_of(self.resp)


@dataclass
class Tally:
    """What the crowd did and saw. Only touched from the event loop's one thread: no locking needed."""

    requests: int = 0
    cut_off: int = 0
    # Clicks again with the same request: the same key, or no key at all (PUT /chart and GET carry none and
    # are idempotent by nature).
    retried_same_key: int = 0
    retried_new_key: int = 0
    units_held_max: int = 0  # the most units reserved at once, as sampled through GET /admin/stock
    statuses: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx answers (a cut-off request has no answer)
    unexpected: list[str] = field(default_factory=list)  # answers this script cannot get from a correct suite
    no_answer: list[str] = field(default_factory=list)  # requests not cut off that got no answer at all
    live_stock: list[str] = field(default_factory=list)  # broken stock figures seen while the crowd shopped
    told_paid: dict[str, str] = field(default_factory=dict)  # order id -> user, for orders answered as paid
    told_expired: dict[str, str] = field(default_factory=dict)  # order id -> user, payments answered ORDER_EXPIRED
    latency: dict[str, list[float]] = field(default_factory=dict)  # step -> seconds of answers not cut off


class CrowdShopper:
    """One shopper of the crowd and their random script."""

    def __init__(self, client: httpx.AsyncClient, suite, tally: Tally, run: str, index: int, seed: int):
        self.user = f"crowd-{run}-{index}"
        self.client = client
        self.headers = suite.auth(self.user)
        self.tally = tally
        # Per shopper, so a shopper's script does not depend on how the others were scheduled.
        self.rng = random.Random(f"{seed}:{index}")
        self.trace: list[str] = []  # what this shopper sent and got, for a failure's report

    def key(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4).hex

    async def _request(self, method: str, path: str, body, key: str | None, timeout: float) -> httpx.Response:
        self.tally.requests += 1
        headers = self.headers | ({"Idempotency-Key": key} if key else {})
        return await self.client.request(method, path, json=body, headers=headers, timeout=timeout)

    def _seen(self, answer: Answer, what: str) -> Answer:
        self.trace.append(f"{what}{' (again)' if answer.cut else ''} -> {answer.status} {answer.reason}".rstrip())
        self.tally.statuses[answer.status] += 1
        if answer.status >= 300:
            self.tally.reasons[f"{answer.status} {answer.reason or '?'}"] += 1
        if answer.status >= 500:
            again = " (the click again after a cut-off)" if answer.cut else ""
            self.tally.server_errors.append(f"{self.user} {what}{again}: {describe(answer.resp)}")
        return answer

    async def send(self, method: str, path: str, body=None, key: str | None = None) -> Answer | None:
        """One click: maybe abandoned after 1-300 ms and then clicked again; None if no answer came at all."""
        what = f"{method} {path}"
        # Drawn every time, used or not, so the script's later draws do not depend on the timing.
        cut = self.rng.random() < CUT_OFF_SHARE
        patience = self.rng.uniform(*CUT_OFF_AFTER)
        fresh = self.rng.random() < 0.5
        pause = self.rng.uniform(0.0, 0.2)
        sent = time.monotonic()
        try:
            resp = await self._request(method, path, body, key, patience if cut else NORMAL_TIMEOUT)
            self.tally.latency.setdefault(f"{method} {path.rsplit('/', 2)[0] if method == 'PUT' else path}",
                                          []).append(time.monotonic() - sent)
            return self._seen(Answer(resp), what)
        except httpx.TimeoutException:
            if not cut:
                self.tally.no_answer.append(f"{self.user} {what}: no answer in {NORMAL_TIMEOUT:.0f} s")
                return None
        except httpx.TransportError as err:
            self.tally.no_answer.append(f"{self.user} {what}: {type(err).__name__} {err}")
            return None
        self.tally.cut_off += 1
        new_key = key is not None and fresh
        self.trace.append(f"{what} -> cut off after {patience * 1000:.0f} ms, again with "
                          + ("a new key" if new_key else "the same key" if key else "no key"))
        if new_key:
            key = self.key()
            self.tally.retried_new_key += 1
        else:
            self.tally.retried_same_key += 1
        await asyncio.sleep(pause)
        try:
            resp = await self._request(method, path, body, key, NORMAL_TIMEOUT)
        except httpx.HTTPError as err:
            self.tally.no_answer.append(f"{self.user} {what} (click again): {type(err).__name__} {err}")
            return None
        return self._seen(Answer(resp, cut=True, new_key=new_key), what)

    def _stop(self, answer: Answer | None, step: str) -> str | None:
        """None to go on after a 200; otherwise why the shopper stops (an unexpected answer is recorded)."""
        if answer is None:
            return f"{step}: no answer"
        if answer.status == 200:
            return None
        if (answer.status, answer.reason) in STOPS:
            return f"{step}: {answer.reason}"
        if answer.status < 500:  # 5xx are counted by _seen already
            cut = " after a cut-off" + (" with a new key" if answer.new_key else " with the same key") \
                if answer.cut else ""
            self.tally.unexpected.append(f"{self.user} {step}{cut}: {describe(answer.resp)}")
        return f"{step}: {answer.status} {answer.reason}".rstrip()

    async def shop(self) -> str:
        """The script; returns how it ended."""
        answer = await self.send("POST", "/chart", {"sku": SKU, "qty": self.rng.randint(1, 2)}, self.key())
        if stop := self._stop(answer, "add"):
            return stop
        change = self.rng.random()
        if change < 0.25:
            answer = await self.send("PUT", f"/chart/{SKU}/{self.rng.randint(1, 3)}")
            if stop := self._stop(answer, "set"):
                return stop
        elif change < 0.45:
            answer = await self.send("PUT", f"/chart/{SKU}/0")
            if stop := self._stop(answer, "remove"):
                return stop
            answer = await self.send("POST", "/chart", {"sku": SKU, "qty": self.rng.randint(1, 2)}, self.key())
            if stop := self._stop(answer, "add again"):
                return stop
        answer = await self.send("POST", "/checkout", {}, self.key())
        if answer is not None and answer.cut and (answer.status, answer.reason) == (400, "CART_EMPTY"):
            # The abandoned click may have made the order: the shopper looks for it among their orders.
            order = await self.newest_pending_order()
            if order is None:
                return "checkout: CART_EMPTY, no order awaiting payment"
        elif stop := self._stop(answer, "checkout"):
            return stop
        else:
            order = answer.resp.json()
        return await self.pay(order)

    async def newest_pending_order(self) -> dict | None:
        """The newest of the shopper's orders if it awaits payment; a few looks, since an abandoned
        checkout may still be finishing."""
        for _ in range(5):
            answer = await self.send("GET", "/orders", None)
            if answer is None:
                return None
            if answer.status != 200:
                self._stop(answer, "list orders")
                return None
            items = answer.resp.json()["items"]
            if items:
                return items[0] if items[0]["status"] == "PENDING_PAYMENT" else None
            await asyncio.sleep(0.3)
        return None

    async def pay(self, order: dict) -> str:
        body = {"orderId": order["orderId"], "amount": order["total"], "method": "card", "token": "tok_visa"}
        answer = await self.send("POST", "/payment", body, self.key())
        if answer is not None and answer.status == 200:
            if answer.resp.json().get("status") != "PAID":
                self.tally.unexpected.append(f"{self.user} pay: 200 but {answer.resp.text[:200]}")
                return "pay: 200 not PAID"
            self.tally.told_paid[order["orderId"]] = self.user
            return "paid"
        if answer is not None and answer.cut and answer.new_key and (answer.status, answer.reason) == (
                409, "ALREADY_PAID"):
            self.tally.told_paid[order["orderId"]] = self.user  # the abandoned click paid it
            return "paid"
        if answer is not None and (answer.status, answer.reason) == (409, "ORDER_EXPIRED"):
            self.tally.told_expired[order["orderId"]] = self.user
        return self._stop(answer, "pay")


async def watch_stock(client: httpx.AsyncClient, admin: dict, tally: Tally, done: asyncio.Event) -> None:
    """Follows the hot SKU's figures while the crowd shops: the most units held, and any broken figure."""
    while not done.is_set():
        try:
            resp = await client.get(f"/admin/stock/{SKU}", headers=admin, timeout=NORMAL_TIMEOUT)
        except httpx.HTTPError as err:
            tally.no_answer.append(f"admin GET /admin/stock/{SKU}: {type(err).__name__} {err}")
        else:
            if resp.status_code != 200:
                tally.live_stock.append(f"GET /admin/stock/{SKU}: {describe(resp)}")
            else:
                s = resp.json()
                tally.units_held_max = max(tally.units_held_max, s["reserved"])
                if not (0 <= s["reserved"] <= s["onHand"] <= UNITS and s["available"] == s["onHand"] - s["reserved"]):
                    tally.live_stock.append(f"stock figures {s} break 0 <= reserved <= onHand <= {UNITS}, "
                                            "available = onHand - reserved")
        await asyncio.sleep(0.05)


async def await_live_settings(http: httpx.Client, suite, run: str) -> None:
    """Waits until fresh holds and orders get the short windows (live settings apply within ~5 s)."""
    admin = suite.auth("ops", "admin")
    assert http.put(f"/admin/stock/{PROBE_SKU}", json={"onHand": 200}, headers=admin).status_code == 200
    probe = suite.auth(f"probe-{run}")
    deadline = time.monotonic() + 15
    while True:
        added = http.post("/chart", json={"sku": PROBE_SKU, "qty": 1}, headers=probe)
        assert added.status_code == 200, f"probe add: {describe(added)}"
        hold_left = seconds(added.json()["items"][0]["reservedUntil"]) - time.time()
        order = http.post("/checkout", json={}, headers=probe)
        assert order.status_code == 200, f"probe checkout: {describe(order)}"
        window = seconds(order.json()["payBefore"]) - seconds(order.json()["createdAt"])
        if hold_left <= RESERVATION_TTL + 1 and window <= PAYMENT_WINDOW + 1:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"live settings not applied after 15 s: a new hold lasts {hold_left:.1f} s "
                        f"(want {RESERVATION_TTL}), a new order's window is {window:.1f} s (want {PAYMENT_WINDOW})")
        await asyncio.sleep(0.3)


async def fetch(conn: psycopg.AsyncConnection, query: str, params: tuple = ()) -> list[tuple]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def committed_holds(conn: psycopg.AsyncConnection) -> dict[str, int]:
    """Hold id -> units of the hot SKU's sold (COMMITTED) holds."""
    return dict(await fetch(conn, "SELECT id::text, qty FROM inventory.holds WHERE sku = %s AND state = 'COMMITTED'",
                            (SKU,)))


@pytest.mark.e2e
@pytest.mark.timeout(240)
async def test_a_crowd_that_abandons_requests_and_clicks_again_keeps_the_books(suite, http, kv, audit_clean):
    seed = int(os.environ.get("CROWD_SEED") or random.SystemRandom().randrange(2**32))
    run = uuid.uuid4().hex[:8]
    users = f"crowd-{run}-%"  # LIKE pattern of this run's shoppers (hex run ids: no wildcards inside)
    print(f"\ncrowd: seed={seed} run={run} (replay the scripts with CROWD_SEED={seed})")
    admin = suite.auth("ops", "admin")

    kv("shop/config/reservation_ttl_seconds", str(RESERVATION_TTL))
    kv("shop/config/payment_window_seconds", str(PAYMENT_WINDOW))
    await await_live_settings(http, suite, run)

    stock = http.put(f"/admin/stock/{SKU}", json={"onHand": UNITS}, headers=admin)
    assert stock.status_code == 200, f"setting the stock of {SKU}: {describe(stock)}"
    sales_before = http.get(f"/catalogs/{SKU}").json()["sales"]
    async with await psycopg.AsyncConnection.connect(suite.dsn, autocommit=True) as conn:
        sold_before = await committed_holds(conn)

    tally = Tally()
    limits = httpx.Limits(max_connections=4 * SHOPPERS, max_keepalive_connections=4 * SHOPPERS)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=suite.base_url, timeout=NORMAL_TIMEOUT, limits=limits) as client:
        shoppers = [CrowdShopper(client, suite, tally, run, i, seed) for i in range(SHOPPERS)]
        gate, done = asyncio.Event(), asyncio.Event()

        async def shop(shopper: CrowdShopper) -> None:
            await gate.wait()  # everyone at the same moment
            try:
                tally.outcomes[await shopper.shop()] += 1
            except asyncio.CancelledError:
                tally.no_answer.append(f"{shopper.user}: still waiting for an answer after {CROWD_SECONDS} s")
                raise

        watcher = asyncio.create_task(watch_stock(client, admin, tally, done))
        tasks = [asyncio.create_task(shop(s)) for s in shoppers]
        await asyncio.sleep(0.2)
        gate.set()
        _, stuck = await asyncio.wait(tasks, timeout=CROWD_SECONDS)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        shopped = time.monotonic()
        done.set()
        await watcher

        # Every hold and payment window runs out; the sweepers give back what was not sold.
        async with await psycopg.AsyncConnection.connect(suite.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + SETTLE_SECONDS
            while True:
                figures = (await client.get(f"/admin/stock/{SKU}", headers=admin)).json()
                ((pending,),) = await fetch(conn, "SELECT count(*) FROM orders.orders WHERE user_id LIKE %s"
                                                  " AND status = 'PENDING_PAYMENT'", (users,))
                ((db_on_hand, db_reserved),) = await fetch(
                    conn, "SELECT on_hand, reserved FROM inventory.stock WHERE sku = %s", (SKU,))
                if figures["reserved"] == 0 and db_reserved == 0 and pending == 0:
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            settled = time.monotonic()

            sold_after = await committed_holds(conn)
            sold_now = {h: q for h, q in sold_after.items() if h not in sold_before}
            units_sold = sum(sold_after.values()) - sum(sold_before.values())
            paid_items = await fetch(conn, """
                SELECT o.id::text, o.user_id, i.hold_id::text, i.qty
                  FROM orders.orders o JOIN orders.items i ON i.order_id = o.id
                 WHERE o.status = 'PAID' AND o.user_id LIKE %s AND i.sku = %s""", (users, SKU))
            units_paid = sum(r[3] for r in paid_items)
            statuses = Counter(dict(await fetch(
                conn, "SELECT status, count(*) FROM orders.orders WHERE user_id LIKE %s GROUP BY status", (users,))))
            charges = await fetch(conn, """
                SELECT o.id::text, o.user_id, o.status, o.total, o.payment_id,
                       count(c.payment_id) FILTER (WHERE c.refunded_at IS NULL),
                       count(c.payment_id) FILTER (WHERE c.refunded_at IS NULL AND c.payment_id = o.payment_id
                                                   AND c.amount = o.total),
                       count(c.payment_id)
                  FROM orders.orders o
                  LEFT JOIN orders.payments p ON p.order_id = o.id
                  LEFT JOIN orders.provider_charges c ON c.payment_id = p.payment_id
                 WHERE o.user_id LIKE %s
                 GROUP BY o.id""", (users,))
            holds_of = {r[0]: r[1:] for r in await fetch(
                conn, "SELECT id::text, owner, state, qty, order_id FROM inventory.holds WHERE sku = %s", (SKU,))}
            order_status = dict(await fetch(conn, "SELECT id::text, status FROM orders.orders WHERE user_id LIKE %s",
                                            (users,)))
            # A line's hold is the truth of its units (docs/api.md); the line only names it, so the line's
            # own qty may lag and a line whose hold a lost change ended is hidden. What must hold: the
            # hold a line names is of the line's SKU.
            lines = await fetch(conn, """
                SELECT l.user_id, l.sku, l.hold_id::text, h.sku, h.state, h.owner
                  FROM cart.lines l JOIN inventory.holds h ON h.id = l.hold_id
                 WHERE l.user_id LIKE %s AND h.sku <> l.sku""", (users,))

        # Nothing is held any more, so every line a cart still shows must say its hold has run out.
        carts = await asyncio.gather(*(client.get("/chart", headers=s.headers) for s in shoppers))

        # The catalog hears of units sold through the order service's outbox: give it a few seconds.
        deadline = time.monotonic() + 10
        while True:
            sales_after = (await client.get(f"/catalogs/{SKU}")).json()["sales"]
            if sales_after - sales_before == units_sold or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)

    suite_findings = await asyncio.to_thread(audit_dsn, suite.dsn)
    inventory_findings = await asyncio.to_thread(audit_clean)

    summary = (f"crowd: seed={seed} shoppers={SHOPPERS} requests={tally.requests} cut_off={tally.cut_off} "
               f"retried_same_key={tally.retried_same_key} retried_new_key={tally.retried_new_key} "
               f"units_held_max={tally.units_held_max} units_sold={units_sold} units_paid={units_paid} "
               f"orders_paid={statuses['PAID']} orders_expired={statuses['EXPIRED']} "
               f"statuses={dict(sorted(tally.statuses.items()))}")
    print(summary)
    print(f"crowd: shopped in {shopped - started:.1f} s, settled {settled - shopped:.1f} s later; "
          f"outcomes={dict(tally.outcomes.most_common())} answers={dict(tally.reasons.most_common())} "
          f"orders={dict(statuses)} catalog sales +{sales_after - sales_before}")
    print("crowd: answer times (median/max ms) " + " ".join(
        f"{step}={1000 * statistics.median(xs):.0f}/{1000 * max(xs):.0f}"
        for step, xs in sorted(tally.latency.items())))

    problems: list[str] = []
    if figures["reserved"] or db_reserved or pending:
        problems.append(f"not settled {SETTLE_SECONDS} s after the crowd, with every {RESERVATION_TTL} s hold and "
                        f"{PAYMENT_WINDOW} s payment window long over: {SKU} reserved={figures['reserved']} (API) / "
                        f"{db_reserved} (table), {pending} order(s) of the crowd still PENDING_PAYMENT")
    if units_sold != units_paid:
        paid_holds = {r[2] for r in paid_items}

        def hold(hold_id: str) -> str:
            if hold_id not in holds_of:
                return f"hold {hold_id} (missing)"
            owner, state, qty, order_id = holds_of[hold_id]
            return (f"hold {hold_id} ({state} x{qty}, owner {owner}, order {order_id}: "
                    f"{order_status.get(order_id or '', 'no order of the crowd')})")

        sold_unpaid = [hold(h) for h in sold_now if h not in paid_holds]
        paid_unsold = [f"order {r[0]} of {r[1]}: {hold(r[2])}" for r in paid_items if r[2] not in sold_now]
        problems.append(f"units sold != units paid: {units_sold} unit(s) of {SKU} left stock (COMMITTED holds), "
                        f"but PAID orders of the crowd hold {units_paid}; sold in no paid order: {sold_unpaid}; "
                        f"paid but not sold: {paid_unsold}")
    if sales_after - sales_before != units_sold:
        problems.append(f"catalog sales != units sold: the catalog's sales of {SKU} went {sales_before} -> "
                        f"{sales_after} (+{sales_after - sales_before}), but {units_sold} unit(s) were sold")
    on_hand_want = UNITS - units_sold
    if (figures["onHand"], db_on_hand) != (on_hand_want, on_hand_want):
        problems.append(f"on hand != {UNITS} - units sold: {SKU} onHand={figures['onHand']} (API) / {db_on_hand} "
                        f"(table), expected {UNITS} - {units_sold} = {on_hand_want}")
    for order_id, user, status, total, payment_id, standing, standing_own, every in charges:
        want = 1 if status == "PAID" else 0
        if standing != want or (status == "PAID" and standing_own != 1):
            problems.append(f"charges: {status} order {order_id} of {user} (total {total}, payment {payment_id}) has "
                            f"{standing} unrefunded charge(s) of {every}, {standing_own} of them its own payment's "
                            f"for the total; want exactly {want}, and every other refunded")
    for order_id, user in tally.told_paid.items():
        if order_status.get(order_id) != "PAID":
            problems.append(f"paid answer lost: {user} was told order {order_id} is paid, "
                            f"but it is {order_status.get(order_id, 'missing')}")
    for order_id, user in tally.told_expired.items():
        if order_status.get(order_id) == "PAID":  # API.md: ORDER_EXPIRED is an answer "with nothing charged"
            problems.append(f"expired answer contradicted: {user}'s payment of order {order_id} was answered "
                            f"409 ORDER_EXPIRED, but the order ended PAID (charged)")
    for user, sku, hold_id, hold_sku, state, owner in lines:
        problems.append(f"cart line names another SKU's hold: {user}'s line {sku} -> hold {hold_id} of {hold_sku} "
                        f"({state}, owner {owner})")
    for shopper, cart in zip(shoppers, carts, strict=True):
        if cart.status_code != 200:
            problems.append(f"GET /chart of {shopper.user}: {describe(cart)}")
        elif figures["reserved"] == 0 and (live := [i for i in cart.json()["items"] if not i["expired"]]):
            problems.append(f"cart disagrees with inventory: {shopper.user}'s cart shows {live} as held, but "
                            f"{SKU} has reserved={figures['reserved']} after every hold ran out")
    if tally.server_errors:
        problems.append(f"{len(tally.server_errors)} 5xx answer(s) (a cut-off request has no answer, so every 5xx "
                        f"answered a request that was not cut off): {tally.server_errors}")
    if tally.no_answer:
        problems.append(f"requests without an answer: {tally.no_answer}")
    if tally.unexpected:
        problems.append(f"answers this script cannot get from a correct suite: {tally.unexpected}")
    if tally.live_stock:
        problems.append(f"stock figures broken while the crowd shopped: {tally.live_stock[:10]}")
    if inventory_findings:
        problems.append(f"inventory audit: {inventory_findings}")
    if suite_findings:
        problems.append(f"suite audit: {suite_findings}")
    named = {u for p in problems for u in re.findall(rf"crowd-{run}-\d+", p)}
    traces = [f"{s.user}: " + "; ".join(s.trace) for s in shoppers if s.user in named]
    assert not problems, "\n".join(["", *problems, summary, f"replay the scripts with CROWD_SEED={seed}",
                                     *(["what the shoppers named above did:"] + traces if traces else [])])
