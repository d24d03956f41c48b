"""Builds the cart service's gRPC server."""

from __future__ import annotations

from pathlib import Path

from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop_runtime.config import ServiceSettings
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server


class CartServicer(cart_pb2_grpc.CartServiceServicer):
    """Not built yet: every RPC answers UNIMPLEMENTED, the generated base class's answer (a 501 at the gateway)."""


def create_server(settings: ServiceSettings, deps: Deps) -> GrpcApp:
    """The cart server."""
    return build_server(
        settings,
        [(cart_pb2_grpc.add_CartServiceServicer_to_server, CartServicer())],
        [cart_pb2.DESCRIPTOR.services_by_name["CartService"].full_name],
    )


SPEC = ServiceSpec(
    name="cart",
    default_port=50052,
    schema="cart",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
)
