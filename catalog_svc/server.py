"""Builds the catalog's gRPC server from settings and dependencies."""

from __future__ import annotations

from pathlib import Path

from catalog_svc.service import Catalog
from catalog_svc.servicer import CatalogServicer
from shop.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime.clients import ServiceClient
from shop_runtime.config import ServiceSettings
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server

# How long the catalog waits for inventory before answering UNAVAILABLE.
AVAILABILITY_TIMEOUT = 2.0


def availability_from(inventory: ServiceClient):
    """An availability lookup through inventory's batch RPC, tried on a second instance if the first is down."""

    async def lookup(skus: list[str]) -> dict[str, int]:
        answer = await inventory.call("GetAvailability", inventory_pb2.GetAvailabilityRequest(skus=skus),
                                      timeout=AVAILABILITY_TIMEOUT, attempts=2)
        return {item.sku: item.available for item in answer.items}

    return lookup


def create_server(settings: ServiceSettings, deps: Deps) -> GrpcApp:
    """The catalog server, asking inventory (found through Consul) for availability."""
    inventory = deps.client("inventory", inventory_pb2_grpc.InventoryServiceStub, settings.service_name)
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
