"""Per-user rate limits and crowd refusals at the gateway: real Envoys of their own in front of the suite's services."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from devstack.procs import Proc, on_free_ports, wait_up
from devstack.stack import free_port, gateway_processes, http_get
from shop.cart.v1 import cart_pb2, cart_pb2_grpc

pytestmark = pytest.mark.e2e

# Small limits, so a test passes them with a handful of requests.
RATE, BURST = 2, 5
# A product no other test uses, with stock for every add of this module.
SKU = "SP-0201"


@contextlib.contextmanager
def own_gateway(suite, log_dir, run_dir, settings: dict[str, str]):
    """An Envoy (and its Consul sync) in front of the suite's services with `settings`, on ports picked free (and
    picked again when one was taken before Envoy bound it); yields its base URL."""
    procs: list[Proc] = []

    def start(ports) -> None:
        procs[:] = [Proc(spec, log_dir) for spec in gateway_processes(ports, run_dir, suite.secrets, settings,
                                                                      suite.tls_dir)]

        def up() -> bool:
            try:
                return http_get(f"http://127.0.0.1:{ports.gateway}/catalogs?limit=1")[0] == 200
            except OSError:
                return False  # Envoy not listening yet

        try:
            wait_up(procs, up, 60, "the test's gateway")
        except BaseException:
            for p in procs:
                p.stop()
            raise

    try:
        ports, _ = on_free_ports(start, lambda: dataclasses.replace(suite.ports, gateway=free_port(),
                                                                    envoy_admin=free_port()), "the test's gateway")
        yield f"http://127.0.0.1:{ports.gateway}"
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def limited(suite, log_dir, tmp_path_factory, http):
    """A gateway whose per-user limit is RATE requests per second with bursts of BURST."""
    admin = suite.auth("ops", "admin")
    assert http.put(f"/admin/stock/{SKU}", json={"onHand": 100_000}, headers=admin).status_code == 200
    settings = {"GATEWAY_RATE_LIMIT_PER_SECOND": str(RATE), "GATEWAY_RATE_LIMIT_BURST": str(BURST)}
    with own_gateway(suite, log_dir, tmp_path_factory.mktemp("limited-gateway"), settings) as base:
        yield base


def user(suite) -> dict[str, str]:
    return suite.auth(f"limited-{uuid.uuid4().hex[:8]}")


def add(base: str, headers: dict[str, str]) -> tuple[httpx.Response, float]:
    """POST /chart of one unit; the answer and how long it took."""
    started = time.monotonic()
    resp = httpx.post(f"{base}/chart", json={"sku": SKU, "qty": 1}, headers=headers, timeout=30)
    return resp, time.monotonic() - started


def assert_rate_limited(resp: httpx.Response, scope: str = "user") -> int:
    """The 429 of API.md: RATE_LIMITED in the JSON error shape, with Retry-After; returns its seconds."""
    assert resp.status_code == 429, resp.text
    body = resp.json()
    assert body["code"] == 8 and body["message"]
    assert body["details"] == [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMITED",
                                "domain": "gateway", "metadata": {"scope": scope}}]
    retry_after = int(resp.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def exhaust(base: str, headers: dict[str, str]) -> httpx.Response:
    """Sends adds until the gateway refuses one; returns the refusal."""
    for _ in range(BURST + 20):
        resp, _ = add(base, headers)
        assert resp.status_code in (200, 429), resp.text
        if resp.status_code == 429:
            return resp
    pytest.fail(f"{BURST + 20} adds in a row and no 429")


def test_a_burst_past_the_limit_is_refused_at_once_while_another_user_is_served(limited, suite):
    alice, bob = user(suite), user(suite)
    burst = BURST + 10
    started = time.monotonic()
    with ThreadPoolExecutor(burst + 3) as pool:
        alices = [pool.submit(add, limited, alice) for _ in range(burst)]
        bobs = [pool.submit(add, limited, bob) for _ in range(3)]
        alices, bobs = [f.result() for f in alices], [f.result() for f in bobs]
    elapsed = time.monotonic() - started
    statuses = sorted(resp.status_code for resp, _ in alices)
    assert set(statuses) <= {200, 429}, [r.text for r, _ in alices if r.status_code not in (200, 429)]
    served = statuses.count(200)
    # The bucket's BURST tokens, plus what it refilled while the burst was under way.
    assert 1 <= served <= BURST + RATE * elapsed + 1, (statuses, elapsed)
    refusals = [(resp, took) for resp, took in alices if resp.status_code == 429]
    assert refusals, statuses
    # What a service answered through Envoy carries the time Envoy waited for it; a refusal below must not.
    assert all("x-envoy-upstream-service-time" in resp.headers for resp, _ in alices if resp.status_code == 200)
    for resp, took in refusals:
        assert_rate_limited(resp)
        # Answered by the gateway itself, never after a trip to a service (which Envoy would have timed).
        assert "x-envoy-upstream-service-time" not in resp.headers, dict(resp.headers)
    # Bob's own bucket is full: alice's burst takes nothing from it.
    assert [resp.status_code for resp, _ in bobs] == [200, 200, 200], [resp.text for resp, _ in bobs]


def test_reads_are_not_limited(limited, suite):
    carol = user(suite)
    exhaust(limited, carol)
    with httpx.Client(base_url=limited, timeout=30) as client:
        # Well past the bucket, right after carol's changes were refused: her reads and everyone's are served.
        for _ in range(BURST * 3):
            assert client.get("/chart", headers=carol).status_code == 200
            assert client.get("/orders", headers=carol).status_code == 200
            assert client.get(f"/catalogs/{SKU}", headers=carol).status_code == 200
            assert client.get("/catalogs", params={"limit": 1}).status_code == 200


def test_after_waiting_retry_after_seconds_the_user_is_served_again(limited, suite):
    dave = user(suite)
    retry_after = assert_rate_limited(exhaust(limited, dave))
    # At the limit's rate a token is back after 1/RATE s; Retry-After rounds that up to whole seconds.
    assert retry_after == 1
    time.sleep(retry_after)
    resp, _ = add(limited, dave)
    assert resp.status_code == 200, resp.text


def test_the_same_rpc_called_as_grpc_through_the_gateway_draws_on_the_same_bucket(limited, suite):
    erin = user(suite)
    exhaust(limited, erin)
    with grpc.insecure_channel(limited.removeprefix("http://")) as channel:
        stub = cart_pb2_grpc.CartServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.AddItem(cart_pb2.AddItemRequest(sku=SKU, qty=1), timeout=10,
                         metadata=[("authorization", erin["Authorization"])])
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_default_limits_let_a_person_click_as_fast_as_they_can(suite, log_dir, tmp_path, http):
    """API.md: at least 5 requests per second per user, with bursts of 20."""
    assert http.put(f"/admin/stock/{SKU}", json={"onHand": 100_000}, headers=suite.auth("ops", "admin")).status_code \
        == 200
    frank = user(suite)
    # No GATEWAY_* settings at all: the defaults, whatever the environment of the test run says.
    with own_gateway(suite, log_dir, tmp_path, {}) as base:
        with ThreadPoolExecutor(20) as pool:
            burst = list(pool.map(lambda _: add(base, frank)[0], range(20)))
        assert [r.status_code for r in burst] == [200] * 20, [r.text for r in burst if r.status_code != 200]
        # Then 5 a second, on an emptied bucket, for 4 s.
        for n in range(20):
            due = time.monotonic() + 0.2
            resp, _ = add(base, frank)
            assert resp.status_code == 200, f"request {n} at 5/s after a burst of 20: {resp.text}"
            time.sleep(max(0.0, due - time.monotonic()))


async def test_requests_past_a_services_capacity_are_refused_at_once_with_429_not_503(suite, log_dir, tmp_path):
    settings = {"GATEWAY_MAX_REQUESTS_PER_SERVICE": "1"}
    with own_gateway(suite, log_dir, tmp_path, settings) as base:
        start = asyncio.Event()

        async def read() -> tuple[httpx.Response, float]:
            # One connection each, all sent at once: far more than one catalog request in flight.
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                await start.wait()
                started = time.monotonic()
                resp = await client.get(f"/catalogs/{SKU}")
                return resp, time.monotonic() - started

        tasks = [asyncio.create_task(read()) for _ in range(60)]
        await asyncio.sleep(0.2)
        start.set()
        answers = await asyncio.gather(*tasks)
    statuses = [resp.status_code for resp, _ in answers]
    assert set(statuses) <= {200, 429}, [resp.text for resp, _ in answers if resp.status_code not in (200, 429)]
    assert 200 in statuses and 429 in statuses, statuses
    for resp, took in answers:
        if resp.status_code == 429:
            assert_rate_limited(resp, scope="gateway")
            assert "x-envoy-upstream-service-time" not in resp.headers, dict(resp.headers)
