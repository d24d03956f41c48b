"""The gRPC face of the merchant's product management (shop.catalog.v1.CatalogAdminService): messages in, calls
to catalog_svc.admin with the admin's user id, messages out."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from catalog_svc.admin import CatalogAdmin, ProductPatch
from catalog_svc.campaigns import ServerClock
from catalog_svc.model import ProductRow
from catalog_svc.servicer import _product_pb
from shop.catalog.v1 import catalog_admin_pb2, catalog_admin_pb2_grpc, catalog_pb2
from shop_runtime.calls import idempotency_key, require_user


def _row(p: catalog_admin_pb2.CreateProductRequest) -> ProductRow:
    return ProductRow(sku=p.sku, name=p.name, description=p.description, category=p.category, price=p.price,
                      sales=0)


def _fields_pb(fields: dict[str, Any] | None) -> catalog_admin_pb2.ProductFields | None:
    return None if fields is None else catalog_admin_pb2.ProductFields(**fields)


def _given(request: Any, field: str) -> Any:
    return getattr(request, field) if request.HasField(field) else None


class CatalogAdminServicer(catalog_admin_pb2_grpc.CatalogAdminServiceServicer):
    """Serves shop.catalog.v1.CatalogAdminService; the actor of every change is the user the gateway verified
    (UNAUTHENTICATED without one). Domain errors become statuses in the shared interceptor."""

    def __init__(self, admin: CatalogAdmin, clock: ServerClock | None = None):
        self._admin = admin
        # The store's clock, for the campaign object of a product answered (as the product page works it out).
        self._clock = clock or ServerClock()

    async def CreateProduct(
        self, request: catalog_admin_pb2.CreateProductRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.Product:
        actor = require_user(context)
        return _product_pb(await self._admin.create(actor, _row(request), idempotency_key(context)),
                           self._clock.now())

    async def UpdateProduct(
        self, request: catalog_admin_pb2.UpdateProductRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.Product:
        actor = require_user(context)
        patch = ProductPatch(**{f: _given(request, f) for f in ("name", "description", "category", "price", "listed")})
        return _product_pb(await self._admin.update(actor, request.sku, patch), self._clock.now())

    async def BatchUpsertProducts(
        self, request: catalog_admin_pb2.BatchUpsertProductsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_admin_pb2.BatchUpsertProductsResponse:
        actor = require_user(context)
        created, updated = await self._admin.upsert(actor, [_row(p) for p in request.products])
        return catalog_admin_pb2.BatchUpsertProductsResponse(created=created, updated=updated)

    async def ListProductChanges(
        self, request: catalog_admin_pb2.ListProductChangesRequest, context: grpc.aio.ServicerContext
    ) -> catalog_admin_pb2.ListProductChangesResponse:
        found = await self._admin.changes(request.sku, _given(request, "page"), _given(request, "limit"))
        changes = []
        for c in found.changes:
            changed_at = timestamp_pb2.Timestamp()
            changed_at.FromDatetime(c.changed_at)
            changes.append(catalog_admin_pb2.ProductChange(
                sku=c.sku, actor=c.actor, action=c.action, changed_at=changed_at, before=_fields_pb(c.before),
                after=_fields_pb(c.after)))
        return catalog_admin_pb2.ListProductChangesResponse(
            changes=changes, page=found.page, limit=found.limit, total=found.total)
