"""The catalog's gRPC face: messages in, calls to the service layer, messages out."""

from __future__ import annotations

import weakref
from datetime import datetime

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from catalog_svc.campaigns import Campaign, SaleItem, ServerClock, shown_campaign
from catalog_svc.query import ListQuery, parse_list_query
from catalog_svc.service import Catalog, ProductWithAvailability, ProductPage
from shop.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shop_runtime.errors import invalid_argument

# Views of BatchGetProducts to whether inventory is asked; UNSPECIFIED is BASIC (AIP-157).
_WITH_AVAILABILITY = {
    catalog_pb2.PRODUCT_VIEW_UNSPECIFIED: False,
    catalog_pb2.PRODUCT_VIEW_BASIC: False,
    catalog_pb2.PRODUCT_VIEW_FULL: True,
}


# Product.campaign when the SKU has no campaign to show: REST prints it as null.
_NO_CAMPAIGN = struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
# What decides a product's campaign object at an instant: the campaign shown and its status then (None: none).
CampaignKey = tuple[str, str] | None


def timestamp(at: datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a Timestamp message."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def _shown(product: ProductWithAvailability, now: datetime) -> tuple[Campaign, str, SaleItem] | None:
    """The campaign a product shows at `now`, its status then and the product's item of it."""
    shown = shown_campaign(product.campaigns, now) if product.campaigns else None
    item = shown[0].item(product.row.sku) if shown else None
    return None if shown is None or item is None else (shown[0], shown[1], item)


def _campaign_key(product: ProductWithAvailability, now: datetime) -> CampaignKey:
    shown = _shown(product, now)
    return None if shown is None else (shown[0].campaign_id, shown[1])


def _campaign_value(product: ProductWithAvailability, now: datetime) -> struct_pb2.Value:
    """The campaign object of a product at `now` (its status worked out then), or null."""
    shown = _shown(product, now)
    if shown is None:
        return _NO_CAMPAIGN
    campaign, status, item = shown
    message = catalog_pb2.ProductCampaign(
        campaign_id=campaign.campaign_id, name=campaign.name, status=status,
        starts_at=timestamp(campaign.starts_at), ends_at=timestamp(campaign.ends_at), sale_price=item.sale_price,
        quota=item.quota, sold=item.sold, remaining=item.remaining, max_per_user=item.max_per_user)
    value = struct_pb2.Value()
    value.struct_value.update(json_format.MessageToDict(message, always_print_fields_with_no_presence=True))
    return value


def _product_pb(product: ProductWithAvailability, now: datetime | None = None) -> catalog_pb2.Product:
    """A product's message; with `now`, its campaign object as of then (else unset, as BatchGetProducts has it)."""
    row = product.row
    message = catalog_pb2.Product(
        sku=row.sku,
        name=row.name,
        description=row.description,
        category=row.category,
        price=row.price,
        sales=row.sales,
        available=product.available,
    )
    if now is not None:
        message.campaign.CopyFrom(_campaign_value(product, now))
    return message


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    """Serves shop.catalog.v1.CatalogService; domain errors become statuses in the shared interceptor.

    A product's campaign object is worked out when the answer is sent, from the campaigns kept with the product
    and the database's clock (`clock`), so a kept answer's campaign turns LIVE at its start (and goes at its end)
    without waiting for the kept answer to go."""

    def __init__(self, catalog: Catalog, clock: ServerClock | None = None):
        self._catalog = catalog
        self._clock = clock or ServerClock()
        # The message of each page the catalog keeps, built once for all its readers and gone with the page:
        # building a page's product messages was most of this servicer's work on a kept page (py-spy). Kept with
        # the campaigns it shows and their statuses; built again when a status has changed since.
        self._messages: weakref.WeakKeyDictionary[
            ProductPage, tuple[tuple[CampaignKey, ...], catalog_pb2.ListProductsResponse]] = weakref.WeakKeyDictionary()

    def _page_pb(self, query: ListQuery, page: ProductPage) -> catalog_pb2.ListProductsResponse:
        now = self._clock.now()
        shown = tuple(_campaign_key(p, now) for p in page.items)
        kept = self._messages.get(page)
        if kept is None or kept[0] != shown:
            kept = (shown, catalog_pb2.ListProductsResponse(
                items=[_product_pb(p, now) for p in page.items], page=query.page, limit=query.limit, total=page.total))
            self._messages[page] = kept
        return kept[1]

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.ListProductsResponse:
        query = parse_list_query(
            page=request.page if request.HasField("page") else None,
            limit=request.limit if request.HasField("limit") else None,
            sort_by=request.sort_by,
            sort_dir=request.sort_dir,
            category=request.category,
            search=request.search,
        )
        return self._page_pb(query, await self._catalog.list_products(query))

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.Product:
        product = await self._catalog.get_product(request.sku)
        return _product_pb(product, self._clock.now())

    async def BatchGetProducts(
        self, request: catalog_pb2.BatchGetProductsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.BatchGetProductsResponse:
        # proto3 enums are open: a number no value names arrives as itself.
        if request.view not in _WITH_AVAILABILITY:
            raise invalid_argument("view", f"unknown product view {request.view}")
        products = await self._catalog.batch_get(list(request.skus), with_availability=_WITH_AVAILABILITY[request.view])
        return catalog_pb2.BatchGetProductsResponse(products=[_product_pb(p) for p in products],
                                                    unlisted_skus=[p.row.sku for p in products if not p.row.listed])

    async def RecordSales(
        self, request: catalog_pb2.RecordSalesRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.RecordSalesResponse:
        recorded = await self._catalog.record_sales(request.order_id, [(x.sku, x.qty) for x in request.lines])
        return catalog_pb2.RecordSalesResponse(recorded=recorded)
