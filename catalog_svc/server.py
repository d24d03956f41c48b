"""Builds the catalog's gRPC server from settings and dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog_svc.admin import CatalogAdmin
from catalog_svc.admin_servicer import CatalogAdminServicer
from catalog_svc.campaign_servicer import CampaignServicer
from catalog_svc.campaigns import Campaigns
from catalog_svc.service import AvailabilityLookup, Catalog
from catalog_svc.servicer import CatalogServicer
from shop.catalog.v1 import (campaigns_pb2, campaigns_pb2_grpc, catalog_admin_pb2, catalog_admin_pb2_grpc, catalog_pb2,
                             catalog_pb2_grpc)
from inventory_svc import client as inventory_client
from inventory_svc.client import InventoryClient
from shop_runtime.config import EnvSettings, ServiceSettings, setting
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server

def availability_from(inventory: InventoryClient) -> AvailabilityLookup:
    """An availability lookup through inventory's batch RPC, tried on another instance if the first is down."""

    async def lookup(skus: list[str]) -> dict[str, int]:
        return await inventory.availability(skus)

    return lookup


@dataclass(frozen=True)
class CatalogSettings(EnvSettings):
    """The catalog's own settings."""

    # How long a product page's or a listing's answer (with its availability and units sold) is kept and
    # served again by this process; 0 turns the cache off, so every read asks the database and inventory.
    cache_seconds: float = setting("CATALOG_CACHE_SECONDS", 1.0)
    # How long the number of a listing filter's matches (`total`) is kept, when the cache is on: it changes only
    # when products are added or removed or their names, descriptions or categories change (imports), never
    # with stock or sales.
    count_seconds: float = setting("CATALOG_COUNT_SECONDS", 30.0)
    # The most answers kept, per kind (product pages, listings, match counts); the least recently used go.
    cache_entries: int = setting("CATALOG_CACHE_ENTRIES", 1000, minimum=1, maximum=1_000_000)


def create_server(settings: ServiceSettings, deps: Deps, catalog_settings: CatalogSettings | None = None) -> GrpcApp:
    """The catalog server (its storefront reads and the campaigns' routes), asking inventory (found through
    Consul) for availability and campaigns."""
    own = catalog_settings or CatalogSettings.from_env()
    inventory = InventoryClient(deps.client("inventory", inventory_client.STUB, settings.service_name))
    # Campaigns are inventory's; the catalog routes their REST calls and shows them, kept as product pages are.
    campaigns = Campaigns(deps.pool, inventory, cache_seconds=own.cache_seconds, cache_entries=own.cache_entries)
    catalog = Catalog(deps.pool, availability_from(inventory), cache_seconds=own.cache_seconds, count_seconds=own.count_seconds,
                      cache_entries=own.cache_entries, campaigns=campaigns.for_skus)
    return build_server(
        settings,
        [(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, CatalogServicer(catalog, campaigns.clock)),
         (campaigns_pb2_grpc.add_CampaignServiceServicer_to_server, CampaignServicer(campaigns)),
         (catalog_admin_pb2_grpc.add_CatalogAdminServiceServicer_to_server,
          CatalogAdminServicer(CatalogAdmin(deps.pool, availability_from(inventory), campaigns.for_skus),
                               campaigns.clock))],
        [catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
         campaigns_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name,
         catalog_admin_pb2.DESCRIPTOR.services_by_name["CatalogAdminService"].full_name],
    )


SPEC = ServiceSpec(
    name="catalog",
    default_port=50051,
    schema="catalog",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
)
