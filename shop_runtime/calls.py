"""Who is calling, and calls between services: user metadata in, callee errors relayed out."""

from __future__ import annotations

import grpc

from shop_runtime.errors import ServiceError, error_info, invalid_argument, unavailable
from shop_runtime.idempotency import MAX_KEY_LENGTH as MAX_IDEMPOTENCY_KEY
from shop_runtime.logs import REQUEST_ID_METADATA, request_id
from shop_runtime.callers import believes_user_from
from shop_runtime.reasons import refuse

USER_METADATA = "x-shop-user-id"
CALLER_METADATA = "x-shop-caller"
IDEMPOTENCY_METADATA = "idempotency-key"


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str:
    """The value of one metadata entry of the call, or ''."""
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):  # a text entry; only '-bin' names carry bytes
            return value
    return ""


def idempotency_key(context: grpc.aio.ServicerContext) -> str:
    """The call's idempotency key, '' when absent; present, it must be one value of 1..255 characters."""
    values = [v for k, v in context.invocation_metadata() or () if k == IDEMPOTENCY_METADATA and isinstance(v, str)]
    if not values:
        return ""
    if len(values) > 1 or not 1 <= len(values[0]) <= MAX_IDEMPOTENCY_KEY:
        raise invalid_argument("Idempotency-Key", f"Idempotency-Key must be one value of 1..{MAX_IDEMPOTENCY_KEY} characters")
    return values[0]


def asserted_user(context: grpc.aio.ServicerContext) -> str:
    """The end user the call is made for, '' if none: as the gateway verified it, passed on by the services; a
    caller whose word the service does not take about users (shop_runtime.callers) makes an anonymous call."""
    return metadata_value(context, USER_METADATA) if believes_user_from(context) else ""


def require_user(context: grpc.aio.ServicerContext) -> str:
    """The end user the gateway verified; UNAUTHENTICATED when the call carries none (or none to believe)."""
    user = asserted_user(context)
    if not user:
        raise refuse("UNAUTHENTICATED", "no user on this call")
    return user


def outgoing(caller: str, user: str | None = None) -> list[tuple[str, str]]:
    """Metadata of a call to another service on behalf of `user`, with the request id being served."""
    md = [(CALLER_METADATA, caller)]
    if user:
        md.append((USER_METADATA, user))
    if (rid := request_id()) != "-":
        md.append((REQUEST_ID_METADATA, rid))
    return md


def relay(err: grpc.aio.AioRpcError, service: str) -> ServiceError:
    """A callee's refusal as this service's own (same code, reason, metadata); a dead callee is UNAVAILABLE."""
    info = error_info(err)
    if info is None or err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return unavailable(service)
    return ServiceError(err.code(), info.reason, err.details() or info.reason, dict(info.metadata))
