"""The inventory's gRPC face. SetStock and GetStock are not built yet and answer UNIMPLEMENTED (inherited)."""

from __future__ import annotations

import grpc

from inventory_svc.service import Inventory
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    """Serves shop.inventory.v1.InventoryService."""

    def __init__(self, inventory: Inventory):
        self._inventory = inventory

    async def GetAvailability(
        self, request: inventory_pb2.GetAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.GetAvailabilityResponse:
        rows = await self._inventory.availability(list(request.skus))
        return inventory_pb2.GetAvailabilityResponse(
            items=[
                inventory_pb2.StockLevel(sku=r.sku, on_hand=r.on_hand, reserved=r.reserved, available=r.available)
                for r in rows
            ]
        )
