"""Builds the inventory's gRPC server from settings and dependencies."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine

from inventory_svc import sale_figures
from inventory_svc.service import Inventory
from inventory_svc.servicer import InventoryServicer
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime.background import periodic
from shop_runtime.config import EnvSettings, ServiceSettings, setting
from shop_runtime.server import Deps, GrpcApp, ServiceSpec, build_server

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class InventorySettings(EnvSettings):
    """The inventory's own settings."""

    # How often the sweeper looks for expired holds and ended campaigns; 0 turns it off (expiry, and a campaign's
    # end, still hold on every read and write).
    sweep_interval_seconds: float = setting("INVENTORY_SWEEP_INTERVAL_SECONDS", 1.0)


SWEEP_BATCH = 100


def sweeper(inventory: Inventory, interval: float) -> Callable[[], Coroutine[Any, Any, None]]:
    """The background sweep: reclaims expired holds in every replica at once without stepping on the others."""

    async def sweep() -> bool:
        reclaimed = await inventory.sweep_once(SWEEP_BATCH)
        if reclaimed:
            _LOGGER.info("sweeper reclaimed %d expired hold(s) and ended campaign item(s)", reclaimed)
        return reclaimed >= SWEEP_BATCH  # a full batch: more are waiting

    return periodic("inventory-sweeper", sweep, interval)


def create_server(settings: ServiceSettings, deps: Deps, inventory_settings: InventorySettings | None = None) -> GrpcApp:
    """The inventory server over the inventory schema, with its sweeper unless turned off."""
    own = inventory_settings or InventorySettings.from_env()
    inventory = Inventory(deps.pool, deps.clock)
    app = build_server(
        settings,
        [(inventory_pb2_grpc.add_InventoryServiceServicer_to_server, InventoryServicer(inventory))],
        [inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name],
    )
    if own.sweep_interval_seconds > 0:
        app.background.append(sweeper(inventory, own.sweep_interval_seconds))
    # The sale board's figures (INVENTORY_SALE_FIGURES_*; docs/monitoring.md), read beside the calls, never in them.
    if (figures := sale_figures.exporter(deps.pool, deps.clock)) is not None:
        app.background.append(figures)
    return app


SPEC = ServiceSpec(
    name="inventory",
    default_port=50053,
    schema="inventory",
    migrations=Path(__file__).parent / "migrations",
    create_server=create_server,
    # Its transactions are two round trips with no remote call between them (milliseconds, even in a crowd): one
    # that waits seconds for its next statement belongs to a process gone silent, and holds a SKU's lock that
    # every other replica's sale of that SKU waits for.
    idle_in_transaction_seconds=5.0,
)
