"""Renders Envoy's bootstrap: grpc-json transcoding of the annotated RPCs, upstreams by file-based EDS."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway.identity import AUDIENCE, ISSUER
from shop_runtime import deadlines
from shop_runtime.config import env_int
from shop_runtime.mtls import CA_FILE, cert_file, key_file, server_name

# Consul service name -> the gRPC service it serves.
UPSTREAMS = {
    "catalog": "shop.catalog.v1.CatalogService",
    "cart": "shop.cart.v1.CartService",
    "inventory": "shop.inventory.v1.InventoryService",
    "order": "shop.order.v1.OrderService",
}

# Request bodies larger than this are refused with 413 before reaching a service.
MAX_REQUEST_BYTES = 64 * 1024
# URL and headers larger than this are refused with 431.
MAX_HEADERS_KB = 32


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


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens and what it reads."""

    listen_address: str
    listen_port: int
    admin_port: int
    descriptor: Path
    eds_dir: Path
    jwks: Path
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    # The suite's CA and the gateway's certificate (devstack.certs): Envoy calls the services over mutual TLS.
    # None: plaintext, for services that serve without TLS_DIR.
    tls_dir: Path | None = None


# Retries of a route: only of requests that never reached a service (no connection, a stream the server
# refused, a reset before the request was sent), on another instance; a request a service may have begun is
# never sent again by the gateway: a state change is retried by its client, with its Idempotency-Key.
ROUTE_RETRIES = {
    "retry_on": "connect-failure,refused-stream,reset-before-request",
    "num_retries": 2,
    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                                                        "previous_hosts.v3.PreviousHostsPredicate"}}],
    "host_selection_retry_max_attempts": 3,
}

# Verified tokens Envoy keeps (each worker thread), so a crowd's repeated requests skip the RSA check.
JWT_CACHE_SIZE = 20_000

# Paths anyone may call without a token; everything else needs one.
PUBLIC_PREFIX = "/catalogs"
# REST paths under this need a token whose `role` is admin.
ADMIN_PREFIX = "/admin/"
# Headers the gateway sets from a verified token; a client's own copies are removed first.
USER_HEADER = "x-shop-user-id"
ROLE_HEADER = "x-shop-role"


@dataclass(frozen=True)
class Method:
    """An RPC with a REST route."""

    service: str
    name: str
    rest_path: str
    # The REST route's HTTP method, lower case as google.api.http names it (`get`, `post`, ...).
    verb: str

    @property
    def grpc_path(self) -> str:
        """The path of the RPC when called as gRPC."""
        return f"/{self.service}/{self.name}"


def exposed_methods(descriptor: Path) -> list[Method]:
    """The RPCs carrying a google.api.http rule; only these are routed."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    wanted = set(UPSTREAMS.values())
    found = []
    for file in files.file:
        for service in file.service:
            full_name = f"{file.package}.{service.name}"
            if full_name not in wanted:
                continue
            for m in service.method:
                if m.options.HasExtension(annotations_pb2.http):
                    rule = m.options.Extensions[annotations_pb2.http]
                    verb = rule.WhichOneof("pattern")
                    found.append(Method(full_name, m.name, getattr(rule, verb), verb))
    return sorted(found, key=lambda m: m.grpc_path)


def _error_body(code: int, reason: str, message: str = "%LOCAL_REPLY_BODY%",
                metadata: dict[str, str] | None = None) -> dict:
    """The JSON error shape of API.md for replies the gateway makes itself."""
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "gateway"}
    if metadata:
        info["metadata"] = metadata
    return {
        "json_format": {"code": code, "message": message, "details": [info]},
        "content_type": "application/json",
    }


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


# gRPC accepts only [0-9a-z-_.] in metadata names, and fails a call carrying any other with INTERNAL;
# Envoy forwards every valid HTTP header name (`$`, `!`, `~`, ...). No Envoy option filters header
# names by character set, so these few lines of Lua drop such headers before they reach a service.
_DROP_NON_GRPC_HEADERS = """
function envoy_on_request(handle)
  local drop = {}
  for name, _ in pairs(handle:headers()) do
    if string.sub(name, 1, 1) ~= ":" and string.find(name, "[^0-9a-z_.%-]") then
      table.insert(drop, name)
    end
  end
  for _, name in ipairs(drop) do
    handle:headers():remove(name)
  end
end
"""


def _identity_filters(cfg: GatewayConfig, methods: list[Method]) -> list[dict]:
    """Strip client-sent identity headers, verify the token, set the headers from it, keep admin routes to admins."""
    admin_paths = [m.grpc_path for m in methods if m.rest_path.startswith(ADMIN_PREFIX)]
    admin_only = [{"url_path": {"path": {"prefix": ADMIN_PREFIX}}}] + [
        {"url_path": {"path": {"exact": p}}} for p in admin_paths]
    return [
        {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": _DROP_NON_GRPC_HEADERS},
            },
        },
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"remove": USER_HEADER}, {"remove": ROLE_HEADER}]},
            },
        },
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {
                    "shop": {
                        "issuer": ISSUER,
                        "audiences": [AUDIENCE],
                        "local_jwks": {"filename": str(cfg.jwks)},
                        "forward": False,
                        "clock_skew_seconds": 30,
                        # A token without `exp` would never expire: refused.
                        "require_expiration": True,
                        # A storefront sends the same token with every click: its signature is checked once
                        # and the verified token kept (its expiry is still checked at every use).
                        "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE},
                        "claim_to_headers": [
                            {"header_name": USER_HEADER, "claim_name": "sub"},
                            {"header_name": ROLE_HEADER, "claim_name": "role"},
                        ],
                    }
                },
                "rules": [
                    {"match": {"prefix": PUBLIC_PREFIX}},
                    {"match": {"prefix": "/"}, "requires": {"provider_name": "shop"}},
                ],
            },
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {
                    "action": "ALLOW",
                    "policies": {
                        "not-admin-routes": {
                            "permissions": [{"not_rule": {"or_rules": {"rules": admin_only}}}],
                            "principals": [{"any": True}],
                        },
                        # Admin RPCs are closed to everyone else by REST path and by gRPC path alike.
                        "admins": {
                            "permissions": [{"or_rules": {"rules": admin_only}}],
                            "principals": [{"header": {"name": ROLE_HEADER, "string_match": {"exact": "admin"}}}],
                        },
                    },
                },
            },
        },
    ]


# gRPC RESOURCE_EXHAUSTED: the code of a 429's body.
_RESOURCE_EXHAUSTED = 8


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


def _rate_limit_filter(limits: GatewayLimits, methods: list[Method]) -> dict:
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


def _local_reply_mappers(limits: GatewayLimits) -> list[dict]:
    """Gateway-made replies in the JSON error shape; the first mapper that matches a reply applies."""
    retry_after = [{"header": {"key": "retry-after", "value": str(limits.retry_after_seconds)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    return [
        # A user past their limit: the local rate limiter's reply, the gateway's only own 429 (it sets its
        # response flag RL only after the reply is made, too late for a response_flag_filter).
        {
            "filter": {"status_code_filter": {"comparison": {"op": "EQ", "value": {
                "default_value": 429, "runtime_key": "gateway.local_reply.429"}}}},
            "body_format_override": _error_body(
                _RESOURCE_EXHAUSTED, "RATE_LIMITED", "too many requests from this user; retry after Retry-After "
                "seconds", {"scope": "user"}),
        },
        # A service with max_requests_per_service requests in flight (response flag UO, Envoy's 503 of an
        # upstream overflow): the crowd beyond that gets a fast refusal the client can retry, not a 5xx.
        {
            "filter": {"response_flag_filter": {"flags": ["UO"]}},
            "status_code": 429,
            "headers_to_add": retry_after,
            "body_format_override": _error_body(
                _RESOURCE_EXHAUSTED, "RATE_LIMITED", "the store is busy; retry after Retry-After seconds",
                {"scope": "gateway"}),
        },
        *({
            "filter": {"status_code_filter": {"comparison": {"op": "EQ", "value": {
                "default_value": status, "runtime_key": f"gateway.local_reply.{status}"}}}},
            "body_format_override": _error_body(code, reason),
        } for status, (code, reason) in sorted(_LOCAL_REPLIES.items())),
    ]


def _http_connection_manager(cfg: GatewayConfig, methods: list[Method]) -> dict:
    cluster_of = {grpc_name: cluster for cluster, grpc_name in UPSTREAMS.items()}
    routes = [
        # How long a REST call may take before the gateway answers 504: longer than the worst case of the
        # work behind it (its budget), so a client is never told "timeout" while its payment goes on.
        {"match": {"path": m.grpc_path},
         "route": {"cluster": cluster_of[m.service], "timeout": deadlines.route_timeout(m.grpc_path),
                   "retry_policy": ROUTE_RETRIES}}
        for m in methods
    ]
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rest",
        "codec_type": "AUTO",
        # The id Envoy gives a request (x-request-id, which every service's log lines carry and pass on with
        # their calls) is also in its answer, so a storefront's report of a failure can be found in the logs.
        "always_set_request_id_in_response": True,
        # Matching (tokens, admin routes) sees the path as routed: no `..`, no doubled slashes.
        "normalize_path": True,
        "merge_slashes": True,
        # Refused here with 431, well below what a service's gRPC server accepts as metadata (MAX_METADATA_BYTES).
        "max_request_headers_kb": MAX_HEADERS_KB,
        "route_config": {"name": "rest", "virtual_hosts": [{"name": "shop", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": MAX_REQUEST_BYTES,
                },
            },
            *_identity_filters(cfg, methods),
            *([_rate_limit_filter(cfg.limits, methods)] if cfg.limits.rate_per_second else []),
            {
                "name": "envoy.filters.http.grpc_json_transcoder",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                    "proto_descriptor": str(cfg.descriptor),
                    "services": sorted({m.service for m in methods}),
                    "print_options": {
                        "always_print_primitive_fields": True,
                        "preserve_proto_field_names": False,
                    },
                    "convert_grpc_status": True,
                    "request_validation_options": {
                        "reject_unknown_method": True,
                        "reject_unknown_query_parameters": True,
                        "reject_binding_body_field_collisions": True,
                    },
                },
            },
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        "local_reply_config": {
            "mappers": _local_reply_mappers(cfg.limits),
            "body_format": _error_body(2, "GATEWAY_ERROR"),
        },
    }


def _upstream_tls(service: str, tls_dir: Path) -> dict:
    """Mutual TLS to the instances of `service`: the gateway's certificate, and theirs checked to be the suite's
    and to name `service` (a stranger registered under its name in Consul gets no request). HTTP/2 by ALPN."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": server_name(service),
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{
                    "certificate_chain": {"filename": str(tls_dir / cert_file("gateway"))},
                    "private_key": {"filename": str(tls_dir / key_file("gateway"))},
                }],
                "validation_context": {
                    "trusted_ca": {"filename": str(tls_dir / CA_FILE)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": server_name(service)}}],
                },
            },
        },
    }


def _cluster(name: str, eds_dir: Path, limits: GatewayLimits, tls_dir: Path | None = None) -> dict:
    in_flight = limits.max_requests_per_service
    tls = {"transport_socket": _upstream_tls(name, tls_dir)} if tls_dir else {}
    return {
        **tls,
        "name": name,
        "type": "EDS",
        # On loopback or a LAN a connect takes well under a millisecond, and a dead host refuses at once;
        # one that takes a second is a host whose accept queue overflowed under a crowd (a SYN is resent
        # after 1 s). Failing then would answer 503 for every request waiting on that connection.
        "connect_timeout": "5s",
        "eds_cluster_config": {
            "eds_config": {
                "path_config_source": {"path": str(eds_dir / f"{name}.json"), "watched_directory": {"path": str(eds_dir)}},
                "resource_api_version": "V3",
            }
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        # Envoy's defaults (1,024 requests in flight, 1,024 pending, per cluster and Envoy process) turned a
        # crowd of 2,000 readers into ~900 503s (`overflow`). A service may now have max_requests_per_service
        # requests in flight; what passes that is refused at once with 429 (see _local_reply_mappers), which
        # keeps the queue in front of a service short enough to be served inside its route timeout (at ~1,000
        # answers/s, 10,000 requests wait at most ~10 s of the 15 s a route gives). Pending requests (waiting
        # for a connection, e.g. the whole crowd while the first connection to a new replica comes up) are
        # bounded the same. Connections: gRPC servers here advertise no stream limit, so Envoy multiplexes
        # everything over one HTTP/2 connection per worker thread and instance, and opens more only for a
        # server with a low SETTINGS_MAX_CONCURRENT_STREAMS; the bound is only there to never be the limit.
        # Retries: routes retry only what never reached a service (ROUTE_RETRIES); max_retries bounds them so
        # a crowd meeting a dead replica cannot be multiplied.
        "circuit_breakers": {"thresholds": [{
            "priority": "DEFAULT",
            "max_connections": in_flight,
            "max_pending_requests": in_flight,
            "max_requests": in_flight,
            "max_retries": 3,
        }]},
        # A replica that stops answering (connections refused or reset, timeouts: errors of local origin) is
        # ejected before Consul's check notices. Answers a service chose (DEPENDENCY_UNAVAILABLE, a lost
        # payment answer's 503, ...) count as 5xx but do not eject it: under a crowd that would take healthy
        # replicas out of the pool just when they are needed, so the 5xx and success-rate ejections are off.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 3,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_success_rate": 0,
            "enforcing_local_origin_success_rate": 0,
            "base_ejection_time": "5s",
        },
        # Envoy asks every endpoint itself (the standard gRPC health service), every 2 s while it has traffic:
        # a replica that stops serving leaves the pool within a few seconds, before Consul's check, its
        # deregistration and gateway.sync have all run, and one that comes back joins as soon as it answers.
        # An endpoint that leaves Consul (gateway.sync drops it from the EDS file) leaves the pool at once, even
        # while Envoy's own check still passes: a replica leaving gracefully takes new calls only for a moment
        # after its deregistration (SHUTDOWN_DELAY_SECONDS), and one that comes back on the same port must not
        # be sent calls before it has registered. Calls under way on it are still answered.
        "ignore_health_on_host_removal": True,
        "health_checks": [{
            "timeout": "1s",
            "interval": "2s",
            "no_traffic_interval": "5s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }],
    }


def bootstrap(cfg: GatewayConfig) -> dict:
    """The whole Envoy bootstrap for `cfg`."""
    methods = exposed_methods(cfg.descriptor)
    return {
        # File-based EDS needs a node identity.
        "node": {"id": "shop-gateway", "cluster": "shop-gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": cfg.admin_port}}},
        "static_resources": {
            # No connection limit on the listener (Envoy warns at start that none is set): a crowd is refused
            # request by request with a 429, not by dropped connections, and the bound is the process's file
            # descriptors (one per client connection). The accept queue is the kernel's somaxconn (Envoy's
            # default backlog), which takes a few thousand connections arriving at once.
            "listeners": [
                {
                    "name": "rest",
                    "address": {"socket_address": {"address": cfg.listen_address, "port_value": cfg.listen_port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _http_connection_manager(cfg, methods),
                    }]}],
                }
            ],
            "clusters": [_cluster(name, cfg.eds_dir, cfg.limits, cfg.tls_dir) for name in UPSTREAMS],
        },
    }


def eds_document(cluster: str, endpoints: list[tuple[str, int]]) -> dict:
    """A file-based EDS answer listing `endpoints` for `cluster`."""
    return {
        "version_info": "0",
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": cluster,
                "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}}}
                    for a, p in endpoints
                ]}],
            }
        ],
    }


def write_eds(eds_dir: Path, cluster: str, endpoints: list[tuple[str, int]]) -> None:
    """Replaces the cluster's EDS file atomically; Envoy reloads it when it is moved into place."""
    target = eds_dir / f"{cluster}.json"
    tmp = eds_dir / f".{cluster}.json.tmp"
    tmp.write_text(json.dumps(eds_document(cluster, endpoints)))
    tmp.replace(target)


def write_config(cfg: GatewayConfig, path: Path) -> None:
    """Writes the bootstrap to `path` and an empty EDS file per upstream, so Envoy starts before any service."""
    cfg.eds_dir.mkdir(parents=True, exist_ok=True)
    for name in UPSTREAMS:
        if not (cfg.eds_dir / f"{name}.json").exists():
            write_eds(cfg.eds_dir, name, [])
    path.write_text(json.dumps(bootstrap(cfg), indent=1))
