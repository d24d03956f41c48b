"""The replies the gateway makes itself (refusals, routing and upstream errors) in API.md's JSON error shape."""

from __future__ import annotations

from typing import Any

from gateway.limits import GatewayLimits

# HTTP status of a gateway-made reply -> (gRPC code, reason) of its JSON body.
_LOCAL_REPLIES = {
    400: (3, "INVALID_ARGUMENT"),
    431: (3, "HEADERS_TOO_LARGE"),
    401: (16, "UNAUTHENTICATED"),
    403: (7, "PERMISSION_DENIED"),
    404: (5, "ROUTE_NOT_FOUND"),
    405: (12, "METHOD_NOT_ALLOWED"),
    413: (3, "BODY_TOO_LARGE"),
    503: (14, "UPSTREAM_UNAVAILABLE"),
    504: (4, "UPSTREAM_TIMEOUT"),
}

# gRPC RESOURCE_EXHAUSTED: the code of a 429's body.
_RESOURCE_EXHAUSTED = 8

# The reason of a gateway-made reply that fits none of the others.
GATEWAY_ERROR = "GATEWAY_ERROR"

# Every reason the gateway answers with itself (docs/api.md's error table lists them beside the services').
REASONS = frozenset({reason for _, reason in _LOCAL_REPLIES.values()} | {"RATE_LIMITED", GATEWAY_ERROR})


def error_body(code: int, reason: str, message: str = "%LOCAL_REPLY_BODY%",
               metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON error shape of API.md for replies the gateway makes itself."""
    info: dict[str, Any] = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                            "domain": "gateway"}
    if metadata:
        info["metadata"] = metadata
    return {
        "json_format": {"code": code, "message": message, "details": [info]},
        "content_type": "application/json",
    }


def local_reply_mappers(limits: GatewayLimits) -> list[dict[str, Any]]:
    """Gateway-made replies in the JSON error shape; the first mapper that matches a reply applies."""
    retry_after = [{"header": {"key": "retry-after", "value": str(limits.retry_after_seconds)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    return [
        # A user past their limit: the local rate limiter's reply, the gateway's only own 429 (it sets its
        # response flag RL only after the reply is made, too late for a response_flag_filter).
        {
            "filter": {"status_code_filter": {"comparison": {"op": "EQ", "value": {
                "default_value": 429, "runtime_key": "gateway.local_reply.429"}}}},
            "body_format_override": error_body(
                _RESOURCE_EXHAUSTED, "RATE_LIMITED", "too many requests from this user; retry after Retry-After "
                "seconds", {"scope": "user"}),
        },
        # A service with max_requests_per_service requests in flight (response flag UO, Envoy's 503 of an
        # upstream overflow): the crowd beyond that gets a fast refusal the client can retry, not a 5xx.
        {
            "filter": {"response_flag_filter": {"flags": ["UO"]}},
            "status_code": 429,
            "headers_to_add": retry_after,
            "body_format_override": error_body(
                _RESOURCE_EXHAUSTED, "RATE_LIMITED", "the store is busy; retry after Retry-After seconds",
                {"scope": "gateway"}),
        },
        *({
            "filter": {"status_code_filter": {"comparison": {"op": "EQ", "value": {
                "default_value": status, "runtime_key": f"gateway.local_reply.{status}"}}}},
            "body_format_override": error_body(code, reason),
        } for status, (code, reason) in sorted(_LOCAL_REPLIES.items())),
    ]
