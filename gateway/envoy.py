"""Envoy's bootstrap: the REST listener's filter chain and the upstream clusters, assembled and written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.auth import identity_filters
from gateway.clusters import service_cluster, write_eds
from gateway.limits import GatewayLimits, rate_limit_filter
from gateway.replies import GATEWAY_ERROR, error_body, local_reply_mappers
from gateway.routes import UPSTREAMS, Method, exposed_methods, route_table, transcoder_filter

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
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    # The suite's CA and the gateway's certificate (devstack.certs): Envoy calls the services over mutual TLS.
    # None: plaintext, for services that serve without TLS_DIR.
    tls_dir: Path | None = None
    # A listener on listen_address that serves only the admin's /stats/prometheus and /ready (Prometheus, Consul's
    # check), for deployments where those come from another host; the admin itself stays on loopback. None: none.
    metrics_port: int | None = None


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


def _http_connection_manager(cfg: GatewayConfig, methods: list[Method]) -> dict[str, Any]:
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
        "route_config": {"name": "rest", "virtual_hosts": [{"name": "shop", "domains": ["*"],
                                                             "routes": route_table(methods)}]},
        # In this order: the body's size, header names gRPC accepts, identity (token, admin routes), the
        # per-user limit on the user the token named, then the transcoder and the router.
        "http_filters": [
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": MAX_REQUEST_BYTES,
                },
            },
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": _DROP_NON_GRPC_HEADERS},
                },
            },
            *identity_filters(cfg.jwks, methods),
            *([rate_limit_filter(cfg.limits, methods)] if cfg.limits.rate_per_second else []),
            transcoder_filter(cfg.descriptor, methods),
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        "local_reply_config": {
            "mappers": local_reply_mappers(cfg.limits),
            "body_format": error_body(2, GATEWAY_ERROR),
        },
    }


def bootstrap(cfg: GatewayConfig) -> dict[str, Any]:
    """The whole Envoy bootstrap for `cfg`."""
    methods = exposed_methods(cfg.descriptor)
    config: dict[str, Any] = {
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
            "clusters": [service_cluster(name, cfg.eds_dir, cfg.limits, cfg.tls_dir) for name in UPSTREAMS],
        },
    }
    if cfg.metrics_port is not None:
        resources = config["static_resources"]
        resources["listeners"].append(_metrics_listener(cfg))
        resources["clusters"].append({
            "name": "admin", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "admin", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": cfg.admin_port}}}}]}]},
        })
    return config


def _metrics_listener(cfg: GatewayConfig) -> dict[str, Any]:
    """The metrics listener (GatewayConfig.metrics_port): GET of the admin's two read-only paths, nothing else (the
    admin's other paths change Envoy: /quitquitquit, /healthcheck/fail, ...)."""
    routes = [{"match": {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
               "route": {"cluster": "admin"}} for path in ("/stats/prometheus", "/ready")]
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    return {
        "name": "metrics",
        "address": {"socket_address": {"address": cfg.listen_address, "port_value": cfg.metrics_port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": "metrics",
                "route_config": {"virtual_hosts": [{"name": "metrics", "domains": ["*"], "routes": routes}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    }


def write_config(cfg: GatewayConfig, path: Path) -> None:
    """Writes the bootstrap to `path` and an empty EDS file per upstream, so Envoy starts before any service."""
    cfg.eds_dir.mkdir(parents=True, exist_ok=True)
    for name in UPSTREAMS:
        if not (cfg.eds_dir / f"{name}.json").exists():
            write_eds(cfg.eds_dir, name, [])
    path.write_text(json.dumps(bootstrap(cfg), indent=1))
