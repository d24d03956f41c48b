"""Every refusal reason the suite answers with and its gRPC status code, in one table; refusals are raised by reason."""

from __future__ import annotations

from typing import Any, Mapping

import grpc

from shop_runtime.errors import ServiceError

_C = grpc.StatusCode

# The reason -> code of every refusal a service of the suite makes (docs/api.md, "Errors" and "Internal inventory
# API"). The gateway's own (ROUTE_NOT_FOUND, RATE_LIMITED, ...) are Envoy's, not here.
REASONS: dict[str, grpc.StatusCode] = {
    # any service
    "INVALID_ARGUMENT": _C.INVALID_ARGUMENT,  # shop_runtime.errors.invalid_argument, `field` in the metadata
    "DEPENDENCY_UNAVAILABLE": _C.UNAVAILABLE,  # shop_runtime.errors.unavailable
    "NOT_IMPLEMENTED": _C.UNIMPLEMENTED,  # the interceptor's, for an RPC a servicer does not build
    "UNAUTHENTICATED": _C.UNAUTHENTICATED,  # a user-facing RPC with no user named by the gateway
    "CALLER_NOT_ALLOWED": _C.PERMISSION_DENIED,  # shop_runtime.mtls: a caller's certificate not allowed the RPC
    "IDEMPOTENCY_KEY_REUSED": _C.ABORTED,
    # catalog
    "PRODUCT_NOT_FOUND": _C.NOT_FOUND,
    "PRODUCT_EXISTS": _C.ALREADY_EXISTS,  # POST /admin/products of a SKU the catalog has
    # campaigns (decided by inventory, routed by the catalog)
    "CAMPAIGN_NOT_FOUND": _C.NOT_FOUND,
    "CAMPAIGN_OVERLAP": _C.ABORTED,  # a SKU already in a campaign whose window overlaps
    "SALE_SOLD_OUT": _C.ABORTED,  # the quota cannot cover an add in full; `remaining` and `available`
    "SALE_ENDED": _C.ABORTED,  # a sale line that can no longer be held at its sale price
    "PRICE_CHANGED": _C.ABORTED,  # the units cannot be held at `expectedPrice`; `price` is what they would be
    # inventory
    "OUT_OF_STOCK": _C.ABORTED,
    "PURCHASE_LIMIT": _C.ABORTED,
    "SKU_NOT_FOUND": _C.NOT_FOUND,
    "HOLD_NOT_FOUND": _C.NOT_FOUND,
    "HOLD_NOT_ACTIVE": _C.FAILED_PRECONDITION,
    "HOLD_NOT_OWNED": _C.FAILED_PRECONDITION,
    "BELOW_RESERVED": _C.ABORTED,
    "STOCK_WRITE_FAILED": _C.UNAVAILABLE,
    # cart
    "QTY_LIMIT": _C.INVALID_ARGUMENT,
    "TOTAL_LIMIT": _C.INVALID_ARGUMENT,
    "CART_EMPTY": _C.FAILED_PRECONDITION,
    "CHECKOUT_NOT_FOUND": _C.NOT_FOUND,  # the order's replay of a hand-over the cart never made
    # order
    "ORDER_NOT_FOUND": _C.NOT_FOUND,
    "ORDER_EXPIRED": _C.ABORTED,
    "ALREADY_PAID": _C.ABORTED,
    "AMOUNT_MISMATCH": _C.INVALID_ARGUMENT,
    "PAYMENT_DECLINED": _C.INVALID_ARGUMENT,
    "PAYMENT_SUPERSEDED": _C.ABORTED,
    "PAYMENT_PROVIDER_UNAVAILABLE": _C.UNAVAILABLE,
    "IDEMPOTENCY_KEY_REQUIRED": _C.INVALID_ARGUMENT,
}

# Two reasons have a second code where they mean a state rather than a request, each answered so from the start
# (through the gateway both codes are the same 400):
# inventory's internal API refuses a resize past its caller's max_qty as FAILED_PRECONDITION (the cart answers its
# own callers QTY_LIMIT as INVALID_ARGUMENT);
INVENTORY_REASONS: dict[str, grpc.StatusCode] = REASONS | {"QTY_LIMIT": _C.FAILED_PRECONDITION}
# a cart that already totals more than the limit when shown (its prices rose since its lines were added) is
# refused as FAILED_PRECONDITION: nothing the request asked is wrong.
STATE_REASONS: dict[str, grpc.StatusCode] = REASONS | {"TOTAL_LIMIT": _C.FAILED_PRECONDITION}


def refuse(reason: str, message: str, metadata: Mapping[str, Any] | None = None, *,
           table: Mapping[str, grpc.StatusCode] = REASONS) -> ServiceError:
    """The refusal of `reason`, with the code the table gives it (a KeyError for a reason not in the table)."""
    return ServiceError(table[reason], reason, message, dict(metadata or {}))
