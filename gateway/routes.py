"""The REST routes: which RPCs are exposed, the service each goes to, and the grpc-json transcoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from shop_runtime import deadlines

# Consul service name -> the gRPC services it serves (the catalog serves its storefront reads, the merchant's
# product management and the campaigns' routes as three services of one process).
UPSTREAMS: dict[str, tuple[str, ...]] = {
    "catalog": ("shop.catalog.v1.CatalogService", "shop.catalog.v1.CatalogAdminService",
                "shop.catalog.v1.CampaignService"),
    "cart": ("shop.cart.v1.CartService",),
    "inventory": ("shop.inventory.v1.InventoryService",),
    "order": ("shop.order.v1.OrderService",),
}
# Every gRPC service with REST routes.
ROUTED_SERVICES = frozenset(s for services in UPSTREAMS.values() for s in services)

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
    wanted = ROUTED_SERVICES
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


# REST routes whose bodies may be larger than the gateway's limit for every route (gateway.envoy.MAX_REQUEST_BYTES),
# in bytes: a batch of up to 1,000 products (API.md). Below the listener's buffer of a connection (1 MiB), which the
# transcoder also keeps to.
LARGE_BODY_ROUTES = {("post", "/admin/products:batchUpsert"): 1024 * 1024}


def _large_body_routes(methods: list[Method], cluster_of: dict[str, str]) -> list[dict[str, Any]]:
    """A route per LARGE_BODY_ROUTES entry, by its REST path, only to give the body buffer its own limit: the buffer
    filter reads the route the request has on arrival, before the transcoder turns its path into the RPC's (and
    the RPC's route takes it from there)."""
    return [
        {"match": {"path": m.rest_path, "headers": [{"name": ":method", "string_match": {"exact": m.verb.upper()}}]},
         "route": {"cluster": cluster_of[m.service], "timeout": deadlines.route_timeout(m.grpc_path)},
         "typed_per_filter_config": {"envoy.filters.http.buffer": {
             "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
             "buffer": {"max_request_bytes": size}}}}
        for m in methods if (size := LARGE_BODY_ROUTES.get((m.verb, m.rest_path)))
    ]


def route_table(methods: list[Method]) -> list[dict[str, Any]]:
    """A route per RPC, by its gRPC path (the transcoder has already turned a REST call into one)."""
    cluster_of = {grpc_name: cluster for cluster, grpc_names in UPSTREAMS.items() for grpc_name in grpc_names}
    return _large_body_routes(methods, cluster_of) + [
        # How long a REST call may take before the gateway answers 504: longer than the worst case of the
        # work behind it (its budget), so a client is never told "timeout" while its payment goes on.
        {"match": {"path": m.grpc_path},
         "route": {"cluster": cluster_of[m.service], "timeout": deadlines.route_timeout(m.grpc_path),
                   "retry_policy": ROUTE_RETRIES}}
        for m in methods
    ]


def transcoder_filter(descriptor: Path, methods: list[Method]) -> dict[str, Any]:
    """The grpc-json transcoder of the services in `methods`, from the descriptor set at `descriptor`."""
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": str(descriptor),
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
    }
