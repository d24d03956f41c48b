"""Renders Envoy's bootstrap: grpc-json transcoding of the annotated RPCs, upstreams by file-based EDS."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway.identity import AUDIENCE, ISSUER
from shop_runtime import deadlines

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


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens and what it reads."""

    listen_address: str
    listen_port: int
    admin_port: int
    descriptor: Path
    eds_dir: Path
    jwks: Path


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
                    found.append(Method(full_name, m.name, getattr(rule, rule.WhichOneof("pattern"))))
    return sorted(found, key=lambda m: m.grpc_path)


def _error_body(code: int, reason: str) -> dict:
    """The JSON error shape of API.md for replies the gateway makes itself."""
    return {
        "json_format": {
            "code": code,
            "message": "%LOCAL_REPLY_BODY%",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "gateway"}],
        },
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


def _http_connection_manager(cfg: GatewayConfig, methods: list[Method]) -> dict:
    cluster_of = {grpc_name: cluster for cluster, grpc_name in UPSTREAMS.items()}
    routes = [
        # How long a REST call may take before the gateway answers 504: longer than the worst case of the
        # work behind it (its budget), so a client is never told "timeout" while its payment goes on.
        {"match": {"path": m.grpc_path},
         "route": {"cluster": cluster_of[m.service], "timeout": deadlines.route_timeout(m.grpc_path)}}
        for m in methods
    ]
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rest",
        "codec_type": "AUTO",
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
            "mappers": [
                {
                    "filter": {"status_code_filter": {"comparison": {"op": "EQ", "value": {
                        "default_value": status, "runtime_key": f"gateway.local_reply.{status}"}}}},
                    "body_format_override": _error_body(code, reason),
                }
                for status, (code, reason) in sorted(_LOCAL_REPLIES.items())
            ],
            "body_format": _error_body(2, "GATEWAY_ERROR"),
        },
    }


def _cluster(name: str, eds_dir: Path) -> dict:
    return {
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
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
        # A replica that stops answering is ejected before Consul's check notices.
        "outlier_detection": {"consecutive_5xx": 3, "base_ejection_time": "5s"},
    }


def bootstrap(cfg: GatewayConfig) -> dict:
    """The whole Envoy bootstrap for `cfg`."""
    methods = exposed_methods(cfg.descriptor)
    return {
        # File-based EDS needs a node identity.
        "node": {"id": "shop-gateway", "cluster": "shop-gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": cfg.admin_port}}},
        "static_resources": {
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
            "clusters": [_cluster(name, cfg.eds_dir) for name in UPSTREAMS],
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
