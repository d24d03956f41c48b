"""The catalog's gRPC face: messages in, calls to the service layer, messages out."""

from __future__ import annotations

import weakref

import grpc

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


def _product_pb(product: ProductWithAvailability) -> catalog_pb2.Product:
    row = product.row
    return catalog_pb2.Product(
        sku=row.sku,
        name=row.name,
        description=row.description,
        category=row.category,
        price=row.price,
        sales=row.sales,
        available=product.available,
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    """Serves shop.catalog.v1.CatalogService; domain errors become statuses in the shared interceptor."""

    def __init__(self, catalog: Catalog):
        self._catalog = catalog
        # The message of each page the catalog keeps, built once for all its readers and gone with the page:
        # building a page's product messages was most of this servicer's work on a kept page (py-spy).
        self._messages: weakref.WeakKeyDictionary[ProductPage, catalog_pb2.ListProductsResponse] = \
            weakref.WeakKeyDictionary()

    def _page_pb(self, query: ListQuery, page: ProductPage) -> catalog_pb2.ListProductsResponse:
        message = self._messages.get(page)
        if message is None:
            message = catalog_pb2.ListProductsResponse(
                items=[_product_pb(p) for p in page.items], page=query.page, limit=query.limit, total=page.total)
            self._messages[page] = message
        return message

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
        return _product_pb(await self._catalog.get_product(request.sku))

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
