"""Builds the order service's gRPC server from settings and dependencies."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine

from order_svc.payments import StandInProvider
from order_svc.repair import RECONCILE_AGE_SECONDS
from order_svc.service import Orders
from order_svc.servicer import OrderServicer
from cart_svc import client as cart_client
from cart_svc.client import CartClient
from catalog_svc import client as catalog_client
from catalog_svc.client import CatalogClient
from inventory_svc import client as inventory_client
from inventory_svc.client import InventoryClient
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop_runtime.background import periodic, reconciler
from shop_runtime.config import EnvSettings, ServiceSettings, setting
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server

_LOGGER = logging.getLogger(__name__)


def sweeper(orders: Orders, interval: float) -> Callable[[], Coroutine[Any, Any, None]]:
    """Expires unpaid orders at the end of their window and delivers units sold to the catalog."""

    async def sweep() -> bool:
        if expired := await orders.expire_due():
            _LOGGER.info("expired %d unpaid order(s)", expired)
        await orders.deliver_sales()
        return False

    return periodic("order-sweeper", sweep, interval)


@dataclass(frozen=True)
class OrderSettings(EnvSettings):
    """The order service's own settings."""

    # How old a checkout or payment must be before the reconciler judges it (younger ones may be under way).
    reconcile_min_age_seconds: int = setting("RECONCILE_MIN_AGE_SECONDS", RECONCILE_AGE_SECONDS, minimum=0)
    # How often unpaid orders past their window are expired; 0 turns it off (reads still show EXPIRED).
    sweep_interval_seconds: float = setting("ORDER_SWEEP_INTERVAL_SECONDS", 1.0)
    # How often what crashes and lost answers left behind is looked for; 0 turns it off.
    reconcile_interval_seconds: float = setting("RECONCILE_INTERVAL_SECONDS", 30.0)


def create_server(settings: ServiceSettings, deps: Deps, order_settings: OrderSettings | None = None) -> GrpcApp:
    """The order server over the orders schema, with the stand-in payment provider."""
    own = order_settings or OrderSettings.from_env()
    orders = Orders(
        deps.pool, settings.database_url,
        cart=CartClient(deps.client("cart", cart_client.STUB, settings.service_name)),
        catalog=CatalogClient(deps.client("catalog", catalog_client.STUB, settings.service_name)),
        inventory=InventoryClient(deps.client("inventory", inventory_client.STUB, settings.service_name)),
        provider=StandInProvider(settings.database_url), live=deps.live, clock=deps.clock,
        reconcile_age_seconds=own.reconcile_min_age_seconds,
    )
    app = build_server(
        settings,
        [(order_pb2_grpc.add_OrderServiceServicer_to_server, OrderServicer(orders))],
        [order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name],
    )
    if own.sweep_interval_seconds > 0:
        app.background.append(sweeper(orders, own.sweep_interval_seconds))
    if own.reconcile_interval_seconds > 0:
        app.background.append(reconciler("order", orders.reconcile, own.reconcile_interval_seconds))
    return app


SPEC = ServiceSpec(
    name="order",
    default_port=50054,
    schema="orders",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
)
