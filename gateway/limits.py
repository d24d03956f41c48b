"""How much the gateway lets through: per-user token buckets on the state-changing routes, per-service breakers."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.auth import USER_HEADER
from gateway.routes import Method
from shop_runtime.config import env_int

# The routes that change state, limited per user (API.md "Flash-sale protection"): (verb, REST template).
RATE_LIMITED_ROUTES = frozenset({("post", "/chart"), ("put", "/chart/{sku}/{qty}"), ("post", "/checkout"),
                                 ("post", "/payment")})


@dataclass(frozen=True)
class GatewayLimits:
    """How much the gateway lets through: per user on the routes that change state, and per service."""

    # Sustained requests per second one user may send to RATE_LIMITED_ROUTES (together); 0: no per-user limit.
    rate_per_second: int = 10
    # Requests one user may send at once before the sustained rate applies (the token bucket's size).
    burst: int = 40
    # Users whose buckets are kept at once, least recently seen first out (about 1 KB of Envoy's memory each).
    # An evicted user starts again with a full bucket, which a user idle for burst / rate seconds (4 s by
    # default) has anyway: the limit holds as long as this covers the users of the last few seconds.
    tracked_users: int = 50_000
    # Requests in flight to one service (all its instances) per Envoy process; past it, 429 at once.
    max_requests_per_service: int = 10_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayLimits:
        """The limits the GATEWAY_* variables of `environ` (default: this process's environment) set."""
        return cls(
            rate_per_second=env_int("GATEWAY_RATE_LIMIT_PER_SECOND", cls.rate_per_second, minimum=0,
                                    maximum=1_000_000, environ=environ),
            burst=env_int("GATEWAY_RATE_LIMIT_BURST", cls.burst, minimum=1, maximum=1_000_000, environ=environ),
            tracked_users=env_int("GATEWAY_RATE_LIMIT_USERS", cls.tracked_users, minimum=1, maximum=10_000_000,
                                  environ=environ),
            max_requests_per_service=env_int("GATEWAY_MAX_REQUESTS_PER_SERVICE", cls.max_requests_per_service,
                                             minimum=1, maximum=1_000_000, environ=environ),
        )

    @property
    def retry_after_seconds(self) -> int:
        """What a refused user is told to wait: the bucket refills continuously, so one request's worth
        of tokens is back after 1/rate seconds (rejected requests take none); at least 1 (whole seconds)."""
        return max(1, math.ceil(1 / self.rate_per_second)) if self.rate_per_second else 1


def _rest_path_regex(template: str) -> str:
    """An RE2 pattern of the paths the transcoder routes to `template`: each `{field}` one segment, a
    trailing slash or not (the transcoder takes both), any query. Envoy has already normalised the path
    (dot segments, doubled slashes, escaped unreserved characters) and dropped any fragment."""
    parts = re.split(r"(\{[^}]*\})", template)
    return "^" + "".join("[^/?#]+" if p.startswith("{") else re.escape(p) for p in parts) + r"/?(\?.*)?$"


def limited_methods(methods: list[Method]) -> list[Method]:
    """The RPCs of RATE_LIMITED_ROUTES; a route missing from the protos is an error, not a silent hole."""
    limited = [m for m in methods if (m.verb, m.rest_path) in RATE_LIMITED_ROUTES]
    missing = RATE_LIMITED_ROUTES - {(m.verb, m.rest_path) for m in limited}
    if missing:
        raise ValueError(f"rate-limited routes with no RPC in the descriptor set: {sorted(missing)}")
    return limited


def rate_limit_filter(limits: GatewayLimits, methods: list[Method]) -> dict[str, Any]:
    """A token bucket per user (the verified `sub` in USER_HEADER) over the routes that change state.

    Placed after the token check, so the user header is the gateway's own, and before the transcoder, so a
    refusal is a plain HTTP reply that local_reply_config turns into the JSON error shape. Every request of
    a user to any of the limited routes draws on that user's one bucket; requests to other routes produce
    no descriptor and pass untouched (there is no filter-wide bucket). The buckets are Envoy's dynamic
    descriptors (an empty descriptor value: one bucket per distinct value, kept in an LRU of
    `tracked_users`), shared by all of Envoy's worker threads, so a user's limit holds per Envoy process.
    """
    entry = {"header_value_match": {"descriptor_key": "limited", "descriptor_value": "state-change"}}
    by_user = {"request_headers": {"header_name": USER_HEADER, "descriptor_key": "user"}}
    rate_limits = []
    for m in limited_methods(methods):
        # The REST form, as storefronts call it ...
        rest = [{"name": ":method", "string_match": {"exact": m.verb.upper()}},
                {"name": ":path", "string_match": {"safe_regex": {"regex": _rest_path_regex(m.rest_path)}}}]
        # ... and the same RPC called as gRPC through the gateway, which the transcoder passes on as it is.
        grpc = [{"name": ":path", "string_match": {"exact": m.grpc_path}}]
        for headers in (rest, grpc):
            # The matches are disjoint, so a request makes at most one descriptor and takes one token.
            match = {"header_value_match": entry["header_value_match"] | {"headers": headers}}
            rate_limits.append({"actions": [match, by_user]})
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "per_user",
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "rate_limits": rate_limits,
            "descriptors": [{
                "entries": [{"key": "limited", "value": "state-change"}, {"key": "user"}],
                # Refilled continuously at rate_per_second (tokens_per_fill per fill_interval), up to burst.
                "token_bucket": {"max_tokens": limits.burst, "tokens_per_fill": limits.rate_per_second,
                                 "fill_interval": "1s"},
            }],
            "max_dynamic_descriptors": limits.tracked_users,
            # A caller speaking gRPC to the gateway is told RESOURCE_EXHAUSTED rather than UNAVAILABLE.
            "rate_limited_as_resource_exhausted": True,
            "response_headers_to_add": [{
                "header": {"key": "retry-after", "value": str(limits.retry_after_seconds)},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }],
        },
    }


def circuit_breakers(limits: GatewayLimits) -> dict[str, Any]:
    """The bounds of one service's cluster: requests in flight, pending, connections and retries.

    Envoy's defaults (1,024 requests in flight, 1,024 pending, per cluster and Envoy process) turned a
    crowd of 2,000 readers into ~900 503s (`overflow`). A service may now have max_requests_per_service
    requests in flight; what passes that is refused at once with 429 (see gateway.replies), which keeps the
    queue in front of a service short enough to be served inside its route timeout (at ~1,000 answers/s,
    10,000 requests wait at most ~10 s of the 15 s a route gives). Pending requests (waiting for a
    connection, e.g. the whole crowd while the first connection to a new replica comes up) are bounded the
    same. Connections: gRPC servers here advertise no stream limit, so Envoy multiplexes everything over one
    HTTP/2 connection per worker thread and instance, and opens more only for a server with a low
    SETTINGS_MAX_CONCURRENT_STREAMS; the bound is only there to never be the limit. Retries: routes retry
    only what never reached a service (gateway.routes.ROUTE_RETRIES); max_retries bounds them so a crowd
    meeting a dead replica cannot be multiplied.
    """
    in_flight = limits.max_requests_per_service
    return {"thresholds": [{
        "priority": "DEFAULT",
        "max_connections": in_flight,
        "max_pending_requests": in_flight,
        "max_requests": in_flight,
        "max_retries": 3,
    }]}
