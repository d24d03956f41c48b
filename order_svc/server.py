"""Builds the order service's gRPC server from settings and dependencies."""

from __future__ import annotations

import logging
from pathlib import Path

from order_svc.payments import StandInProvider
from order_svc.service import RECONCILE_AGE_SECONDS, Orders
from order_svc.servicer import OrderServicer
from cart_svc import client as cart_client
from cart_svc.client import CartClient
from catalog_svc import client as catalog_client
from catalog_svc.client import CatalogClient
from inventory_svc import client as inventory_client
from inventory_svc.client import InventoryClient
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop_runtime.config import ServiceSettings, env_float, env_int
from shop_runtime.background import periodic, reconciler
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server

_LOGGER = logging.getLogger(__name__)


def sweeper(orders: Orders, interval: float):
    """Expires unpaid orders at the end of their window and delivers units sold to the catalog."""

    async def sweep() -> bool:
        if expired := await orders.expire_due():
            _LOGGER.info("expired %d unpaid order(s)", expired)
        await orders.deliver_sales()
        return False

    return periodic("order-sweeper", sweep, interval)


def create_server(settings: ServiceSettings, deps: Deps) -> GrpcApp:
    """The order server over the orders schema, with the stand-in payment provider."""
    orders = Orders(
        deps.pool, settings.database_url,
        cart=CartClient(deps.client("cart", cart_client.STUB, settings.service_name)),
        catalog=CatalogClient(deps.client("catalog", catalog_client.STUB, settings.service_name)),
        inventory=InventoryClient(deps.client("inventory", inventory_client.STUB, settings.service_name)),
        provider=StandInProvider(settings.database_url), live=deps.live, clock=deps.clock,
        # How old a checkout or payment must be before the reconciler judges it (younger ones may be under way).
        reconcile_age_seconds=env_int("RECONCILE_MIN_AGE_SECONDS", RECONCILE_AGE_SECONDS, minimum=0),
    )
    app = build_server(
        settings,
        [(order_pb2_grpc.add_OrderServiceServicer_to_server, OrderServicer(orders))],
        [order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name],
    )
    # How often unpaid orders past their window are expired; 0 turns it off (reads still show EXPIRED).
    interval = env_float("ORDER_SWEEP_INTERVAL_SECONDS", 1.0)
    if interval > 0:
        app.background.append(sweeper(orders, interval))
    # How often what crashes and lost answers left behind is looked for; 0 turns it off.
    reconcile_every = env_float("RECONCILE_INTERVAL_SECONDS", 30.0)
    if reconcile_every > 0:
        app.background.append(reconciler("order", orders.reconcile, reconcile_every))
    return app


SPEC = ServiceSpec(
    name="order",
    default_port=50054,
    schema="orders",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
)
