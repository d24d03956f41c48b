"""A request's id follows it: Envoy gives it one (and says which in its answer), and the log lines of every service
the request reaches carry it."""

import time

from tests.e2e.shop_client import Shopper, reason

SKU = "SP-0170"


def test_the_log_lines_of_every_service_a_request_reaches_carry_its_id(http, suite, log_dir):
    assert http.put(f"/admin/stock/{SKU}", json={"onHand": 0}, headers=suite.auth("ops", "admin")).status_code == 200
    resp = Shopper(http, suite).add(SKU, 1)  # refused by inventory, relayed by the cart: both log it
    assert resp.status_code == 409 and reason(resp) == "OUT_OF_STOCK"
    rid = resp.headers["x-request-id"]
    assert len(rid) >= 16

    def services_with_it() -> set[str]:
        return {path.name.split("-")[0] for path in log_dir.glob("*.log") if rid in path.read_text(errors="replace")}

    deadline = time.monotonic() + 5
    while services_with_it() != {"cart", "inventory"} and time.monotonic() < deadline:
        time.sleep(0.1)  # the lines reach their files a moment after the answer
    assert services_with_it() == {"cart", "inventory"}
