"""Builds the cart's gRPC server from settings and dependencies."""

from __future__ import annotations

from pathlib import Path

from cart_svc.service import Carts
from cart_svc.servicer import CartServicer
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop.catalog.v1 import catalog_pb2_grpc
from shop.inventory.v1 import inventory_pb2_grpc
from shop_runtime.config import ServiceSettings
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server


def create_server(settings: ServiceSettings, deps: Deps) -> GrpcApp:
    """The cart server, holding units through inventory and naming products through the catalog."""
    carts = Carts(deps.pool, deps.client("inventory", inventory_pb2_grpc.InventoryServiceStub, settings.service_name),
                  deps.client("catalog", catalog_pb2_grpc.CatalogServiceStub, settings.service_name),
                  deps.live, deps.clock)
    return build_server(
        settings,
        [(cart_pb2_grpc.add_CartServiceServicer_to_server, CartServicer(carts))],
        [cart_pb2.DESCRIPTOR.services_by_name["CartService"].full_name],
    )


SPEC = ServiceSpec(
    name="cart",
    default_port=50052,
    schema="cart",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
)
