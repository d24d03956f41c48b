"""The campaigns' gRPC face (shop.catalog.v1.CampaignService): messages in, calls to catalog_svc.campaigns, messages
out in the admin's shape (figures) or a storefront's."""

from __future__ import annotations

from datetime import datetime

import grpc

from catalog_svc.campaigns import Campaigns, CampaignView
from catalog_svc.servicer import timestamp
from shop.catalog.v1 import campaigns_pb2, campaigns_pb2_grpc
from shop.inventory.v1 import inventory_pb2
from shop_runtime.calls import asserted_user, idempotency_key


def _admin_pb(view: CampaignView) -> campaigns_pb2.AdminCampaign:
    c = view.campaign
    message = campaigns_pb2.AdminCampaign(
        campaign_id=c.campaign_id, name=c.name, status=c.status,
        starts_at=timestamp(c.starts_at), ends_at=timestamp(c.ends_at), server_time=timestamp(view.read_at),
        created_at=timestamp(c.created_at), created_by=c.created_by,
        items=[campaigns_pb2.AdminCampaignItem(
            sku=i.sku, name=p.name if (p := view.products.get(i.sku)) else "", price=p.price if p else 0,
            sale_price=i.sale_price, quota=i.quota, max_per_user=i.max_per_user, held=i.held, sold=i.sold,
            remaining=i.remaining, returned=i.returned, revenue=i.revenue, buyers=i.buyers, refused=dict(i.refused))
            for i in c.items])
    if c.cancelled_at is not None:
        message.cancelled_at.CopyFrom(timestamp(c.cancelled_at))
    return message


def _public_pb(view: CampaignView, status: str, now: datetime) -> campaigns_pb2.PublicCampaign:
    c = view.campaign
    return campaigns_pb2.PublicCampaign(
        campaign_id=c.campaign_id, name=c.name, status=status,
        starts_at=timestamp(c.starts_at), ends_at=timestamp(c.ends_at), server_time=timestamp(now),
        items=[campaigns_pb2.PublicCampaignItem(
            sku=i.sku, name=p.name if (p := view.products.get(i.sku)) else "", price=p.price if p else 0,
            sale_price=i.sale_price, quota=i.quota, sold=i.sold, remaining=i.remaining, max_per_user=i.max_per_user)
            for i in c.items])


def _new_campaign(request: campaigns_pb2.CreateCampaignRequest) -> inventory_pb2.CreateCampaignRequest:
    """The REST body as inventory's request (the idempotency key is set by the rules)."""
    ask = inventory_pb2.CreateCampaignRequest(name=request.name, items=[
        inventory_pb2.NewCampaignItem(sku=i.sku, sale_price=i.sale_price, quota=i.quota, max_per_user=i.max_per_user)
        for i in request.items])
    # Unset stays unset, so inventory names the missing field.
    if request.HasField("starts_at"):
        ask.starts_at.CopyFrom(request.starts_at)
    if request.HasField("ends_at"):
        ask.ends_at.CopyFrom(request.ends_at)
    return ask


class CampaignServicer(campaigns_pb2_grpc.CampaignServiceServicer):
    """Serves shop.catalog.v1.CampaignService; domain errors become statuses in the shared interceptor. The
    gateway lets only admins reach the /admin/ routes."""

    def __init__(self, campaigns: Campaigns):
        self._campaigns = campaigns

    async def CreateCampaign(self, request: campaigns_pb2.CreateCampaignRequest,
                             context: grpc.aio.ServicerContext) -> campaigns_pb2.AdminCampaign:
        view = await self._campaigns.create(_new_campaign(request), idempotency_key(context), asserted_user(context))
        return _admin_pb(view)

    async def CancelCampaign(self, request: campaigns_pb2.CancelCampaignRequest,
                             context: grpc.aio.ServicerContext) -> campaigns_pb2.AdminCampaign:
        view = await self._campaigns.cancel(request.campaign_id, idempotency_key(context), asserted_user(context))
        return _admin_pb(view)

    async def GetCampaign(self, request: campaigns_pb2.GetCampaignRequest,
                          context: grpc.aio.ServicerContext) -> campaigns_pb2.AdminCampaign:
        return _admin_pb(await self._campaigns.get(request.campaign_id))

    async def ListCampaigns(self, request: campaigns_pb2.ListCampaignsRequest,
                            context: grpc.aio.ServicerContext) -> campaigns_pb2.ListCampaignsResponse:
        page, number, limit = await self._campaigns.list_page(
            request.status, request.page if request.HasField("page") else None,
            request.limit if request.HasField("limit") else None)
        return campaigns_pb2.ListCampaignsResponse(
            campaigns=[_admin_pb(v) for v in page.views], page=number, limit=limit, total=page.total,
            server_time=timestamp(page.read_at))

    async def ListPublicCampaigns(self, request: campaigns_pb2.ListPublicCampaignsRequest,
                                  context: grpc.aio.ServicerContext) -> campaigns_pb2.PublicCampaigns:
        shown, now = await self._campaigns.shown()
        return campaigns_pb2.PublicCampaigns(campaigns=[_public_pb(v, status, now) for v, status in shown],
                                             server_time=timestamp(now))

    async def GetPublicCampaign(self, request: campaigns_pb2.GetPublicCampaignRequest,
                                context: grpc.aio.ServicerContext) -> campaigns_pb2.PublicCampaign:
        view, status, now = await self._campaigns.public(request.campaign_id)
        return _public_pb(view, status, now)
