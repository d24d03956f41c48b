"""The order service's gRPC face: messages in, calls to the service layer, messages out."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from order_svc.model import EXPIRED, PAID, PENDING_PAYMENT, OrderRecord
from order_svc.service import Orders
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop_runtime.calls import idempotency_key, require_user


# The model's statuses (the orders table's CHECK allows no other) as the message's enum values, named alike.
STATUSES: dict[str, order_pb2.OrderStatus] = {
    PENDING_PAYMENT: order_pb2.PENDING_PAYMENT,
    PAID: order_pb2.PAID,
    EXPIRED: order_pb2.EXPIRED,
}


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def order_pb(order: OrderRecord) -> order_pb2.Order:
    """An order as a message (the service layer gives its status as of now)."""
    message = order_pb2.Order(
        order_id=order.id,
        status=STATUSES[order.status],
        items=[order_pb2.OrderItem(sku=i.sku, name=i.name, price=i.price, qty=i.qty, subtotal=i.price * i.qty,
                                   campaign_id=i.campaign_id) for i in order.items],
        total=order.total,
        currency=order.currency,
        pay_before=_ts(order.pay_before),
        created_at=_ts(order.created_at),
    )
    if order.payment_id:
        # The payment id and the time paid are only ever written together (repository.mark_paid), and the
        # orders table's CHECK requires both of a paid order.
        assert order.paid_at is not None
        message.payment_id = order.payment_id
        message.paid_at.CopyFrom(_ts(order.paid_at))
    return message


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    """Serves shop.order.v1.OrderService for the user the gateway named."""

    def __init__(self, orders: Orders):
        self._orders = orders

    async def Checkout(self, request, context):
        return order_pb(await self._orders.checkout(require_user(context), idempotency_key(context)))

    async def Pay(self, request, context):
        return order_pb(await self._orders.pay(require_user(context), idempotency_key(context),
                                               request.order_id, request.amount, request.method, request.token))

    async def GetOrder(self, request, context):
        return order_pb(await self._orders.get(require_user(context), request.order_id))

    async def ListOrders(self, request, context):
        orders, page, limit, total = await self._orders.list(
            require_user(context),
            request.page if request.HasField("page") else None,
            request.limit if request.HasField("limit") else None,
        )
        return order_pb2.ListOrdersResponse(items=[order_pb(o) for o in orders], page=page, limit=limit,
                                            total=total)
