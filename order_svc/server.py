"""Builds the order service's gRPC server."""

from __future__ import annotations

from pathlib import Path

from shop.order.v1 import order_pb2, order_pb2_grpc
from shop_runtime.config import ServiceSettings
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    """Not built yet: every RPC answers UNIMPLEMENTED, the generated base class's answer (a 501 at the gateway)."""


def create_server(settings: ServiceSettings, deps: Deps) -> GrpcApp:
    """The order server."""
    return build_server(
        settings,
        [(order_pb2_grpc.add_OrderServiceServicer_to_server, OrderServicer())],
        [order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name],
    )


SPEC = ServiceSpec(
    name="order",
    default_port=50054,
    schema="orders",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
)
