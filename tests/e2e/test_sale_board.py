"""The live sale board in a real browser (Debian's chromium driven by Playwright), served by Prometheus at
/user/board.html over a suite of two replicas of every service: after a small sale (adds, payments, refusals),
its figures for the campaign's SKU are the admin API's, its replicas up are Consul's, and it refreshes by itself.
A screenshot is kept at test-artifacts/sale-board.png, also when an assertion fails."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from devstack.procs import wait_until
from devstack.prometheus import BOARD_DIR
from devstack.stack import ROOT, SERVICE_MODULES, Ports, http_get
from gateway.identity import issue_token
from tests.e2e.replicated import monitored_suite

pytestmark = pytest.mark.e2e

SKU = "SP-0160"
OTHER_SKU = "SP-0161"
REPLICAS = 2
QUOTA, PER_BUYER = 8, 2
# The exporter's pass every second here (5 s by default), so the figures reach Prometheus within a scrape or two.
ENV = {"CONSUL_CHECK_INTERVAL": "1s", "INVENTORY_SALE_FIGURES_INTERVAL_SECONDS": "1"}
SCREENSHOT = ROOT / "test-artifacts" / "sale-board.png"


def chromium() -> str:
    """Debian's chromium (`make test-tools`)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "no chromium: run `make test-tools`"
    return path


@pytest.fixture(scope="module")
def suite(pg_admin_dsn, tmp_path_factory, tls_dir):
    """Two replicas of every service behind Envoy, with Prometheus serving the assembled board."""
    assert (BOARD_DIR / "board.html").exists(), "the board is not assembled: run `make board`"
    run_dir = tmp_path_factory.mktemp("sale-board")
    with monitored_suite(pg_admin_dsn, run_dir, tls_dir, replicas=REPLICAS, env=ENV) as (ports, _dsn):
        yield ports, run_dir / "secrets"


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parsed(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def prometheus(ports: Ports, expr: str) -> list[dict]:
    status, body = http_get(f"http://127.0.0.1:{ports.prometheus}/api/v1/query?{urlencode({'query': expr})}",
                            timeout=5)
    assert status == 200, body
    return json.loads(body)["data"]["result"]


class Shop:
    """The REST API as the test's shoppers and admin use it."""

    def __init__(self, http: httpx.Client, secrets: Path):
        self.http = http
        self.secrets = secrets
        self.admin = {"Authorization": f"Bearer {issue_token(secrets, 'ops', 'admin')}"}

    def user(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(self.secrets, name)}"}

    def add(self, user: str, qty: int, price: int) -> httpx.Response:
        return self.http.post("/chart", json={"sku": SKU, "qty": qty, "expectedPrice": price},
                              headers=self.user(user))

    def buy(self, user: str) -> None:
        """Checks the user's cart out and pays for it."""
        order = self.http.post("/checkout", json={}, headers=self.user(user))
        assert order.status_code == 200, order.text
        paid = self.http.post("/payment", headers=self.user(user) | {"Idempotency-Key": uuid.uuid4().hex}, json={
            "orderId": order.json()["orderId"], "amount": order.json()["total"], "method": "card", "token": "tok_visa"})
        assert paid.status_code == 200, paid.text

    def campaign(self, campaign_id: str) -> dict:
        answer = self.http.get(f"/admin/campaigns/{campaign_id}", headers=self.admin)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def stock(self) -> dict:
        answer = self.http.get(f"/admin/stock/{SKU}", headers=self.admin)
        assert answer.status_code == 200, answer.text
        return answer.json()


def figures_after(ports: Ports, instant: datetime) -> None:
    """Waits until Prometheus has scraped, from every inventory replica, figures read after `instant`."""
    def fresh() -> bool:
        result = prometheus(ports, 'shop_sale_figures_updated_seconds{job="inventory"}')
        return len(result) == REPLICAS and all(float(r["value"][1]) > instant.timestamp() for r in result)

    wait_until(fresh, 60, interval=0.5, what="every inventory replica's figures after the sale, scraped")


def consul_passing(ports: Ports, service: str) -> int:
    status, body = http_get(f"http://{ports.consul_addr}/v1/health/service/{service}?passing=true")
    assert status == 200
    return len(json.loads(body))


def test_the_board_shows_the_sales_figures_and_refreshes_itself(suite):
    from playwright.sync_api import sync_playwright

    ports, secrets = suite
    with httpx.Client(base_url=f"http://127.0.0.1:{ports.gateway}", timeout=30) as http:
        shop = Shop(http, secrets)
        assert http.put(f"/admin/stock/{SKU}", json={"onHand": 50}, headers=shop.admin).status_code == 200
        price = http.get(f"/catalogs/{SKU}").json()["price"]
        sale_price = price // 2
        now = parsed(http.get("/campaigns").json()["serverTime"])
        # Opening in 10 s: the exporter watches a campaign opening soon, so Prometheus has its SKU's counters
        # (at 0) before the first add, and rate() sees every add.
        starts_at = now + timedelta(seconds=10)
        created = http.post("/admin/campaigns", headers=shop.admin | {"Idempotency-Key": uuid.uuid4().hex}, json={
            "name": "Board sale", "startsAt": rfc3339(starts_at), "endsAt": rfc3339(starts_at + timedelta(minutes=10)),
            "items": [{"sku": SKU, "salePrice": sale_price, "quota": QUOTA, "maxPerUser": PER_BUYER}]})
        assert created.status_code == 200, created.text
        campaign_id = created.json()["campaignId"]
        # A shopper buying at the regular price meanwhile: the add's latency histograms exist before the sale.
        regular = shop.http.post("/chart", json={"sku": OTHER_SKU, "qty": 1}, headers=shop.user("b0"))
        print(f"\n  a regular add before the sale: {regular.status_code}")
        wait_until(lambda: len(prometheus(ports, f'shop_sale_adds_total{{sku="{SKU}"}}')) == REPLICAS and prometheus(
            ports, 'shop_rpc_seconds_count{service="cart",method="/shop.cart.v1.CartService/AddItem"}'), 60,
            interval=0.5, what="the campaign's counters and the add's latency in Prometheus before the opening")
        wait_until(lambda: parsed(http.get("/campaigns").json()["serverTime"]) > starts_at, 30, interval=0.2,
                   what="the campaign to open")

        # The sale: two buyers pay for 2 each, two hold 2 and 1, one is over the per-buyer limit and one finds
        # the quota short (1 left).
        for user, qty in (("b1", 2), ("b2", 2), ("b3", 2), ("b4", 1)):
            added = shop.add(user, qty, sale_price)
            assert added.status_code == 200, added.text
        shop.buy("b1")
        shop.buy("b2")
        refusals = {"b1": shop.add("b1", 1, sale_price), "b5": shop.add("b5", 2, sale_price)}
        assert {u: (r.status_code, r.json()["details"][0]["reason"]) for u, r in refusals.items()} == {
            "b1": (409, "PURCHASE_LIMIT"), "b5": (409, "SALE_SOLD_OUT")}
        stopped = parsed(shop.campaign(campaign_id)["serverTime"])
        figures_after(ports, stopped)
        (item,) = shop.campaign(campaign_id)["items"]
        stock = shop.stock()
        print(f"  admin API: {item}\n  stock: {stock}")
        assert (item["remaining"], item["held"], item["sold"]) == (1, 3, 4)

        board_url = f"http://127.0.0.1:{ports.prometheus}/user/board.html?refresh=2&minutes=3"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            try:
                page.goto(board_url)
                cell = f'[data-campaign="{campaign_id}"][data-sku="{SKU}"]'
                page.wait_for_selector(f'{cell}[data-figure="remaining"]', timeout=30_000)
                page.wait_for_function("document.body.dataset.state === 'ok'", timeout=30_000)
                started = time.monotonic()

                def shown(figure: str, where: str = cell) -> str:
                    return page.inner_text(f'{where}[data-figure="{figure}"]')

                board = {f: shown(f) for f in ("quota", "remaining", "held", "sold", "refused")}
                by_reason = dict(t.rsplit(" ", 1) for t in page.locator(
                    f'{cell}[data-figure="refused-by-reason"]').all_inner_texts())
                stock_shown = {f: shown(f, f'td[data-sku="{SKU}"]')
                               for f in ("on-hand", "reserved", "set-aside", "available")}
                replicas = {job: page.inner_text(f'[data-figure="replicas-up"][data-job="{job}"]')
                            for job in SERVICE_MODULES}
                print(f"  board: {board} {by_reason} {stock_shown}; replicas up {replicas};"
                      f" adds/s {shown('adds-per-second')}; p99 of an add at cart"
                      f" {page.inner_text('[data-figure=p99-ms][data-service=cart]')} ms")
                assert board == {"quota": str(item["quota"]), "remaining": str(item["remaining"]),
                                 "held": str(item["held"]), "sold": str(item["sold"]),
                                 "refused": str(sum(item["refused"].values()))}
                assert by_reason == {reason: str(n) for reason, n in item["refused"].items()}
                assert item["refused"] == {"PURCHASE_LIMIT": 1, "SALE_SOLD_OUT": 1}
                assert stock_shown == {"on-hand": str(stock["onHand"]), "reserved": str(stock["reserved"]),
                                       "set-aside": str(stock.get("setAside", 0)),
                                       "available": str(stock["available"])}
                assert replicas == {job: str(consul_passing(ports, job)) for job in SERVICE_MODULES}
                assert set(replicas.values()) == {str(REPLICAS)}
                assert float(shown("adds-per-second")) > 0
                assert float(page.inner_text("[data-figure=p99-ms][data-service=cart]")) > 0
                assert not errors, errors

                # One more purchase, and the page shows it without being reloaded.
                shop.buy("b3")
                wait_until(lambda: shop.campaign(campaign_id)["items"][0]["sold"] == 6, 30, what="b3's payment")
                page.wait_for_function(
                    f"document.querySelector('{cell}[data-figure=\"sold\"]')?.textContent === '6'", timeout=60_000)
                print(f"  after one more purchase the board showed sold 6 without a reload,"
                      f" {time.monotonic() - started:.1f}s after the first figures")
                assert shown("held") == "1" and shown("remaining") == "1"
            finally:
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                print(f"  screenshot: {SCREENSHOT}")
                browser.close()
