"""Builds the inventory's gRPC server from settings and dependencies."""

from __future__ import annotations

from pathlib import Path

from inventory_svc.service import Inventory
from inventory_svc.servicer import InventoryServicer
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime.config import ServiceSettings
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server


def create_server(settings: ServiceSettings, deps: Deps) -> GrpcApp:
    """The inventory server over the inventory schema."""
    return build_server(
        settings,
        [(inventory_pb2_grpc.add_InventoryServiceServicer_to_server, InventoryServicer(Inventory(deps.pool)))],
        [inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name],
    )


SPEC = ServiceSpec(
    name="inventory",
    default_port=50053,
    schema="inventory",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
)
