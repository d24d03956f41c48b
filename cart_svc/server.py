"""Builds the cart's gRPC server from settings and dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cart_svc.service import ORPHAN_AGE_SECONDS, Carts
from cart_svc.servicer import CartServicer
from catalog_svc import client as catalog_client
from catalog_svc.client import CatalogClient
from inventory_svc import client as inventory_client
from inventory_svc.client import InventoryClient
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop_runtime.background import reconciler
from shop_runtime.config import EnvSettings, ServiceSettings, setting
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server


@dataclass(frozen=True)
class CartSettings(EnvSettings):
    """The cart's own settings."""

    # How long names and prices are kept, so a crowd adding one product does not ask the catalog each time.
    price_cache_seconds: float = setting("CART_PRICE_CACHE_SECONDS", 1.0)
    # How old a hold must be before the reconciler judges it (younger ones may be mid-change).
    reconcile_min_age_seconds: int = setting("RECONCILE_MIN_AGE_SECONDS", ORPHAN_AGE_SECONDS, minimum=0)
    # How often cart holds no line refers to are looked for; 0 turns it off.
    reconcile_interval_seconds: float = setting("RECONCILE_INTERVAL_SECONDS", 30.0)


def create_server(settings: ServiceSettings, deps: Deps, cart_settings: CartSettings | None = None) -> GrpcApp:
    """The cart server, holding units through inventory and naming products through the catalog."""
    own = cart_settings or CartSettings.from_env()
    carts = Carts(deps.pool,
                  InventoryClient(deps.client("inventory", inventory_client.STUB, settings.service_name)),
                  CatalogClient(deps.client("catalog", catalog_client.STUB, settings.service_name),
                                price_seconds=own.price_cache_seconds),
                  deps.live, deps.clock, reconcile_age_seconds=own.reconcile_min_age_seconds)
    app = build_server(
        settings,
        [(cart_pb2_grpc.add_CartServiceServicer_to_server, CartServicer(carts))],
        [cart_pb2.DESCRIPTOR.services_by_name["CartService"].full_name],
    )
    if own.reconcile_interval_seconds > 0:
        app.background.append(reconciler("cart", carts.reconcile, own.reconcile_interval_seconds))
    return app


SPEC = ServiceSpec(
    name="cart",
    default_port=50052,
    schema="cart",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
)
