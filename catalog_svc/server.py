"""Builds the catalog's gRPC server from settings and dependencies."""

from __future__ import annotations

from pathlib import Path

from catalog_svc.service import Catalog
from catalog_svc.servicer import CatalogServicer
from shop.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from inventory_svc import client as inventory_client
from inventory_svc.client import InventoryClient
from shop_runtime.config import ServiceSettings
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server

# How long the catalog waits for inventory before answering UNAVAILABLE.
AVAILABILITY_TIMEOUT = 2.0


def availability_from(inventory: InventoryClient):
    """An availability lookup through inventory's batch RPC, tried on another instance if the first is down."""

    async def lookup(skus: list[str]) -> dict[str, int]:
        return await inventory.availability(skus, timeout=AVAILABILITY_TIMEOUT)

    return lookup


def create_server(settings: ServiceSettings, deps: Deps) -> GrpcApp:
    """The catalog server, asking inventory (found through Consul) for availability."""
    inventory = InventoryClient(deps.client("inventory", inventory_client.STUB, settings.service_name))
    catalog = Catalog(deps.pool, availability_from(inventory))
    return build_server(
        settings,
        [(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, CatalogServicer(catalog))],
        [catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name],
    )


SPEC = ServiceSpec(
    name="catalog",
    default_port=50051,
    schema="catalog",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
)
