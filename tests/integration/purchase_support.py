"""The four services in this test's own process, on real Postgres and a real Consul, for cutting calls off on purpose.

The servers are the real ones (`create_server` of each service, real gRPC on free ports, found
through Consul); only their background loops are left off, so a test runs the sweepers and the
reconcilers itself, as a replica would, at the moment it chooses. Being in this process lets a
test set rules of `shop_runtime.faults` that the services' own calls obey.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from dataclasses import dataclass, field

import grpc
import psycopg

from cart_svc.server import SPEC as CART
from cart_svc.service import Carts
from catalog_svc import client as catalog_client
from catalog_svc.client import CatalogClient
from catalog_svc.server import SPEC as CATALOG
from cart_svc import client as cart_client
from cart_svc.client import CartClient
from inventory_svc import client as inventory_client
from inventory_svc.client import InventoryClient
from inventory_svc.server import SPEC as INVENTORY
from order_svc.payments import StandInProvider
from order_svc.server import SPEC as ORDER
from order_svc.service import Orders
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop_runtime import consul as shop_consul
from shop_runtime.clock import Clock, SystemClock
from shop_runtime.config import ServiceSettings
from shop_runtime.db import open_pool
from shop_runtime.errors import error_info
from shop_runtime.live_settings import LiveSettings
from shop_runtime.server import Deps, GrpcApp

SPECS = (CATALOG, INVENTORY, CART, ORDER)


@dataclass
class Service:
    """One running service: its server, pool and dependencies."""

    app: GrpcApp
    deps: Deps


@dataclass
class Suite:
    """The running services, stubs a storefront (the gateway) would call, and service-layer replicas."""

    dsn: str
    services: dict[str, Service]
    cart: cart_pb2_grpc.CartServiceStub
    order: order_pb2_grpc.OrderServiceStub
    carts: Carts
    orders: Orders
    inventory: inventory_pb2_grpc.InventoryServiceStub
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def set_stock(self, sku: str, on_hand: int) -> None:
        """Sets a SKU's units on hand, as an admin would."""
        await self.inventory.SetStock(inventory_pb2.SetStockRequest(sku=sku, on_hand=on_hand),
                                      metadata=[("x-shop-user-id", "test-admin")], timeout=10)

    async def stock(self, sku: str) -> inventory_pb2.StockLevel:
        """A SKU's figures as inventory reports them now."""
        return await self.inventory.GetStock(inventory_pb2.GetStockRequest(sku=sku), timeout=10)

    async def reconcile(self) -> int:
        """One pass of every reconciler and sweeper, as a replica runs them, once the handlers whose callers went
        away have finished their work: a reconciler rightly leaves alone an order whose payment is still under way
        (it holds the order's lock), so the suite is exact after a pass only once that payment is done. On a
        loaded machine such a handler could still be running when the pass came (seen once in CI: a charge of a
        payment still under way, its order awaiting payment)."""
        await asyncio.gather(*(s.app.interceptor.drain(60) for s in self.services.values()))
        return await self.carts.reconcile() + await self.orders.reconcile() + await self.orders.deliver_sales()


def settings(name: str, dsn: str, consul_addr: str) -> ServiceSettings:
    """Settings of an in-process service on a free port."""
    host, _, port = consul_addr.rpartition(":")
    return ServiceSettings(service_name=name, database_url=dsn, grpc_host="127.0.0.1", grpc_port=0,
                           advertise_address="127.0.0.1", consul_host=host, consul_port=int(port),
                           shutdown_grace_seconds=1.0, check_interval="1s", pool_max_size=5)


async def _start(spec, dsn: str, consul, consul_addr: str, clock: Clock) -> Service:
    pool = await open_pool(dsn, max_size=5)
    deps = Deps(pool=pool, consul=consul, live=LiveSettings(consul), clock=clock)
    deps.live.start()
    app = spec.create_server(settings(spec.name, dsn, consul_addr), deps)
    await app.server.start()
    await app.set_serving(True)
    await shop_consul.register(consul, name=spec.name, service_id=f"{spec.name}-{uuid.uuid4().hex[:6]}",
                               address="127.0.0.1", port=app.port, check_interval="1s")
    return Service(app, deps)


@contextlib.asynccontextmanager
async def running_suite(dsn: str, consul_addr: str, clock: Clock | None = None):
    """Starts the four services in this process (all on `clock`, the system's by default); yields a Suite; stops
    them all."""
    clock = clock or SystemClock()
    host, _, port = consul_addr.rpartition(":")
    consul = shop_consul.connect(host, int(port))
    services: dict[str, Service] = {}
    replicas: list[Deps] = []
    try:
        for spec in SPECS:
            services[spec.name] = await _start(spec, dsn, consul, consul_addr, clock)
        pool = services["order"].deps.pool
        replica = Deps(pool=pool, consul=consul, clock=clock)
        replicas.append(replica)
        inventory = InventoryClient(replica.client("inventory", inventory_client.STUB, "test-replica"))
        catalog = CatalogClient(replica.client("catalog", catalog_client.STUB, "test-replica"))
        carts = Carts(services["cart"].deps.pool, inventory, catalog, replica.live, replica.clock,
                      reconcile_age_seconds=0)
        orders = Orders(pool, dsn, CartClient(replica.client("cart", cart_client.STUB, "test-replica")), catalog,
                        inventory, StandInProvider(dsn), replica.live, replica.clock, reconcile_age_seconds=0)
        # Everyone (the services and the replicas) sees every service passing before the test starts.
        discoveries = [d for s in [*services.values()] for d in s.deps._discoveries] + replica._discoveries
        for _ in range(100):
            if all(d.instances() for d in discoveries):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the in-process services did not find each other in Consul")
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{services[n].app.port}")
                    for n in ("cart", "order", "inventory")]
        yield Suite(dsn, services, cart_pb2_grpc.CartServiceStub(channels[0]),
                    order_pb2_grpc.OrderServiceStub(channels[1]), carts, orders,
                    inventory_pb2_grpc.InventoryServiceStub(channels[2]), channels)
        for c in channels:
            await c.close()
    finally:
        for d in replicas:
            await d.close()
        for s in services.values():
            await s.app.server.stop(0)
            await s.app.interceptor.drain(5)
            await s.deps.close()
            await s.deps.pool.close()
        await consul.close()


class SuiteThread:
    """The in-process suite on an event loop thread of its own, callable from synchronous code."""

    def __init__(self, dsn: str, consul_addr: str, clock: Clock | None = None):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._running = running_suite(dsn, consul_addr, clock)
        self.suite = self.call(self._running.__aenter__())

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.call(self._running.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call."""
    info = error_info(err)
    return info.reason if info else err.code().name


class Shopper:
    """One user calling the cart and order services as the gateway would on their behalf."""

    def __init__(self, suite: Suite, user: str | None = None):
        self.suite = suite
        self.user = user or f"cut-{uuid.uuid4().hex[:8]}"

    def _md(self, key: str | None) -> list[tuple[str, str]]:
        return [("x-shop-user-id", self.user)] + ([("idempotency-key", key)] if key else [])

    async def add(self, sku: str, qty: int, key: str | None = None, timeout: float = 30) -> cart_pb2.Cart:
        return await self.suite.cart.AddItem(cart_pb2.AddItemRequest(sku=sku, qty=qty), metadata=self._md(key),
                                             timeout=timeout)

    async def set(self, sku: str, qty: int, key: str | None = None) -> cart_pb2.Cart:
        return await self.suite.cart.SetItemQuantity(cart_pb2.SetItemQuantityRequest(sku=sku, qty=qty),
                                                     metadata=self._md(key), timeout=30)

    async def cart(self) -> cart_pb2.Cart:
        return await self.suite.cart.GetCart(cart_pb2.GetCartRequest(), metadata=self._md(None), timeout=30)

    async def checkout(self, key: str | None = None) -> order_pb2.Order:
        return await self.suite.order.Checkout(order_pb2.CheckoutRequest(), metadata=self._md(key), timeout=60)

    async def pay(self, order: order_pb2.Order, key: str, token: str = "tok_visa",
                  timeout: float = 60) -> order_pb2.Order:
        return await self.suite.order.Pay(order_pb2.PayRequest(order_id=order.order_id, amount=order.total,
                                                               method="card", token=token),
                                          metadata=self._md(key), timeout=timeout)

    async def orders(self) -> list[order_pb2.Order]:
        answer = await self.suite.order.ListOrders(order_pb2.ListOrdersRequest(limit=100), metadata=self._md(None),
                                                   timeout=30)
        return list(answer.items)


def rows(dsn: str, query: str, *params) -> list[tuple]:
    """Rows straight from the database."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def held_for_cart(dsn: str, user: str) -> dict[str, int]:
    """Units per SKU of the user's active, unexpired cart holds, from inventory's own records."""
    return dict(rows(dsn, "SELECT sku, sum(qty)::int FROM inventory.holds WHERE owner = %s AND state = 'ACTIVE'"
                          " AND expires_at > clock_timestamp() GROUP BY sku", f"cart:{user}"))


def charges_standing(dsn: str, order_id: str) -> int:
    """Charges of the order's attempts that the provider kept (not refunded)."""
    return rows(dsn, "SELECT count(*) FROM orders.provider_charges c JOIN orders.payments p"
                     " ON p.payment_id = c.payment_id WHERE p.order_id = %s AND c.refunded_at IS NULL",
                order_id)[0][0]
