"""No strangers: every gRPC port of the suite takes only callers with a certificate of the suite's CA, believes the
user header only from the gateway and the services, and nothing of the suite calls an instance that cannot prove
it is the service Consul lists it as."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import httpx
import psycopg
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devstack.certs import ensure_certs
from devstack.demo_data import generate
from devstack.procs import wait_until
from devstack.stack import SERVICE_MODULES, passing_instances
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime import mtls
from shop_runtime.calls import USER_METADATA
from shop_runtime.consul import connect, deregister, register
from shop_runtime.mtls import Tls
from tests.e2e.test_gateway_health import catalog_hosts

pytestmark = pytest.mark.e2e

HEALTH_REQUEST = health_pb2.HealthCheckRequest()
# Demo products with stock to spare.
IN_STOCK = [p.sku for p in generate() if p.on_hand >= 30][:9]


async def health_of(channel: grpc.aio.Channel) -> grpc.StatusCode | int:
    """The health status the channel's server answers, or the code the call failed with."""
    try:
        return (await health_pb2_grpc.HealthStub(channel).Check(HEALTH_REQUEST, timeout=5)).status
    except grpc.aio.AioRpcError as err:
        return err.code()


@pytest.mark.parametrize("service", list(SERVICE_MODULES))
async def test_every_grpc_port_refuses_a_caller_without_a_certificate_of_the_suite(suite, service, tmp_path):
    target = f"127.0.0.1:{suite.ports.services[service]}"
    ca = (suite.tls_dir / mtls.CA_FILE).read_bytes()
    name = [("grpc.ssl_target_name_override", mtls.server_name(service))]
    # A certificate for the same identity, from a CA of the stranger's own making.
    forged = Tls.load(ensure_certs(tmp_path / "stranger"), "gateway")
    callers = {
        "plaintext": grpc.aio.insecure_channel(target),
        "TLS without a certificate": grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca), options=name),
        "a certificate of another CA": grpc.aio.secure_channel(
            target, grpc.ssl_channel_credentials(ca, forged.key, forged.cert), options=name),
        "a certificate of the suite": suite.channel(service, "ops"),
    }
    answers = {}
    for what, channel in callers.items():
        async with channel:
            answers[what] = await health_of(channel)
    assert answers == {"plaintext": grpc.StatusCode.UNAVAILABLE,
                       "TLS without a certificate": grpc.StatusCode.UNAVAILABLE,
                       "a certificate of another CA": grpc.StatusCode.UNAVAILABLE,
                       "a certificate of the suite": health_pb2.HealthCheckResponse.SERVING}


async def test_a_user_header_is_believed_from_the_gateway_only_not_from_another_certificate_of_the_suite(http, suite):
    victim = f"victim-{uuid.uuid4().hex[:6]}"
    sku = IN_STOCK[0]
    assert http.post("/chart", json={"sku": sku, "qty": 1}, headers=suite.auth(victim)).status_code == 200
    forged = [(USER_METADATA, victim)]
    async with suite.channel("cart", "ops") as ops, suite.channel("cart", "gateway") as gateway:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cart_pb2_grpc.CartServiceStub(ops).GetCart(cart_pb2.GetCartRequest(), metadata=forged, timeout=10)
        seen_by_gateway = await cart_pb2_grpc.CartServiceStub(gateway).GetCart(
            cart_pb2.GetCartRequest(), metadata=forged, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert [line.sku for line in seen_by_gateway.items] == [sku]

    # A stock change from an operator's certificate is written to the ledger as that certificate's, whatever the
    # call says about a user.
    new_sku = f"ST-{uuid.uuid4().hex[:6]}"
    async with suite.channel("inventory", "ops") as channel:
        await inventory_pb2_grpc.InventoryServiceStub(channel).SetStock(
            inventory_pb2.SetStockRequest(sku=new_sku, on_hand=5), metadata=forged, timeout=10)
    with psycopg.connect(suite.dsn) as conn:
        (actor,), = conn.execute("SELECT actor FROM inventory.ledger WHERE sku = %s", (new_sku,)).fetchall()
    assert actor == "ops"


async def test_a_certificate_of_the_suite_calls_only_what_its_identity_has_a_reason_to_call(suite):
    """The catalog's certificate cannot set stock or commit holds, nor the gateway's commit holds (it has no REST
    route to it); the order's may commit. A refused call changes nothing."""
    sku = f"ST-{uuid.uuid4().hex[:6]}"
    set_stock = inventory_pb2.SetStockRequest(sku=sku, on_hand=5)
    commit = inventory_pb2.CommitHoldsRequest(hold_ids=[str(uuid.uuid4())], idempotency_key=uuid.uuid4().hex)
    refused = {}
    for identity, rpc, request in [("catalog", "SetStock", set_stock), ("catalog", "CommitHolds", commit),
                                   ("gateway", "CommitHolds", commit), ("cart", "CommitHolds", commit)]:
        async with suite.channel("inventory", identity) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await getattr(inventory_pb2_grpc.InventoryServiceStub(channel), rpc)(request, timeout=10)
        refused[(identity, rpc)] = (err.value.code(), err.value.details())
    assert refused == {
        ("catalog", "SetStock"): (grpc.StatusCode.PERMISSION_DENIED, "catalog may not call SetStock"),
        ("catalog", "CommitHolds"): (grpc.StatusCode.PERMISSION_DENIED, "catalog may not call CommitHolds"),
        ("gateway", "CommitHolds"): (grpc.StatusCode.PERMISSION_DENIED, "gateway may not call CommitHolds"),
        ("cart", "CommitHolds"): (grpc.StatusCode.PERMISSION_DENIED, "cart may not call CommitHolds")}
    with psycopg.connect(suite.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM inventory.ledger WHERE sku = %s", (sku,)).fetchone() == (0,)
    # The identities that do call them get past the check (to the handler's own answer for an unknown hold).
    async with suite.channel("inventory", "order") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inventory_pb2_grpc.InventoryServiceStub(channel).CommitHolds(commit, timeout=10)
    assert err.value.code() != grpc.StatusCode.PERMISSION_DENIED
    async with suite.channel("inventory", "gateway") as channel:
        await inventory_pb2_grpc.InventoryServiceStub(channel).SetStock(set_stock, timeout=10)


class Stranger:
    """A gRPC server that anyone could run: TLS with a certificate naming the catalog but of another CA, healthy
    to whoever asks, and keeping the name of every other method it is called for."""

    def __init__(self, tls: Tls):
        self.calls: list[str] = []
        self.server = grpc.aio.server()
        stranger = self

        class Recorder(grpc.GenericRpcHandler):
            def service(self, details):
                stranger.calls.append(details.method)
                return None  # UNIMPLEMENTED: it only had to be reached

        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        self.server.add_generic_rpc_handlers([Recorder()])
        self.port = self.server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([(tls.key, tls.cert)]))
        self.health = servicer


async def test_an_instance_that_cannot_prove_it_is_the_catalog_gets_no_call_though_consul_lists_it(http, suite,
                                                                                                  tmp_path):
    """Consul's API is open in the local run: anyone reaching it can register an instance under a service's name.
    The gateway and the services check the certificate of every instance they call, so such a stranger, passing in
    Consul, gets not one call, and every request is served by the real catalog."""
    stranger = Stranger(Tls.load(ensure_certs(tmp_path / "stranger", ("catalog",)), "catalog"))
    await stranger.server.start()
    await stranger.health.set("", health_pb2.HealthCheckResponse.SERVING)
    client = connect(*suite.ports.consul_addr.split(":"))
    stranger_id = f"catalog-stranger-{uuid.uuid4().hex[:6]}"
    try:
        await register(client, name="catalog", service_id=stranger_id, address="127.0.0.1", port=stranger.port,
                       check_interval="1s", passing=True, tls=True)
        # Consul checks it (skipping the name, as for every instance) and lists it; Envoy is told of it.
        await asyncio.to_thread(wait_until, lambda: stranger.port in {
            e["Service"]["Port"] for e in passing_instances(suite.ports, "catalog")}, 15, what="the stranger listed")
        await asyncio.to_thread(wait_until, lambda: stranger.port in catalog_hosts(suite.ports.envoy_admin), 15,
                                what="the stranger among Envoy's catalog hosts")
        async with httpx.AsyncClient(base_url=suite.base_url, timeout=30) as shop:
            answers = await asyncio.gather(*(shop.get(f"/catalogs/{IN_STOCK[i % 9]}") for i in range(60)))
            user = f"shopper-{uuid.uuid4().hex[:6]}"
            for i in range(12):  # the cart asks the catalog for names and prices
                await asyncio.sleep(0.1)
                answers.append(await shop.post("/chart", json={"sku": IN_STOCK[i % 9], "qty": 1},
                                               headers=suite.auth(user)))
        assert [r.status_code for r in answers] == [200] * len(answers)
        assert stranger.port in {e["Service"]["Port"] for e in passing_instances(suite.ports, "catalog")}
        assert stranger.calls == []  # not one call of the catalog reached it
    finally:
        await deregister(client, stranger_id)
        await client.close()
        await stranger.server.stop(0)
