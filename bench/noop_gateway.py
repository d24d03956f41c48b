"""A bench-only Envoy bootstrap: the production gateway's, plus REST routes to a gRPC call that does nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

# The no-op: the standard health check of a service, which answers from memory. It runs through the same
# server (interceptors included) as every other call, so it is the least a REST call through Envoy costs.
NOOP_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
NOOP_GRPC_PATH = f"/{NOOP_SERVICE}/Check"
# Public, like GET /catalogs...: the ceiling of the catalog reads.
NOOP_GET_PATH = "/bench/noop"
# With a token and a JSON body, like POST /chart: the ceiling of the cart's add (the JWT check and the body's
# transcoding are part of what Envoy does for it).
NOOP_POST_PATH = "/bench/noop-authenticated"
# The Consul service whose instances answer the no-op: the catalog serves the public reads, and every service
# runs the same server code and worker count, so which one answers a health check makes no difference.
NOOP_CLUSTER = "catalog"

_TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
_JWT = "envoy.filters.http.jwt_authn"
_RATE_LIMIT = "envoy.filters.http.local_ratelimit"


def write_descriptor(production: Path, out: Path) -> None:
    """The production descriptor set plus the health service with HTTP rules for the two no-op routes."""
    files = descriptor_pb2.FileDescriptorSet.FromString(production.read_bytes())
    health = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(health)
    check = next(m for m in health.service[0].method if m.name == "Check")
    rule = http_pb2.HttpRule(get=NOOP_GET_PATH,
                             additional_bindings=[http_pb2.HttpRule(post=NOOP_POST_PATH, body="*")])
    check.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    health.dependency.append(annotations_pb2.DESCRIPTOR.name)
    if all(f.name != annotations_pb2.DESCRIPTOR.name for f in files.file):
        raise ValueError(f"{production} lacks {annotations_pb2.DESCRIPTOR.name}; was it built with --include_imports?")
    files.file.append(health)
    out.write_bytes(files.SerializeToString())


def _filter(http_filters: list[dict], name: str) -> dict:
    for f in http_filters:
        if f["name"] == name:
            return f["typed_config"]
    raise KeyError(f"the gateway's bootstrap has no {name} filter")


def with_noop_routes(bootstrap: dict, descriptor: Path, timeout: str = "10s") -> dict:
    """A copy of `bootstrap` whose REST listener also routes the two no-op paths, transcoded from `descriptor`."""
    config = copy.deepcopy(bootstrap)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    transcoder = _filter(filters, _TRANSCODER)
    transcoder["proto_descriptor"] = str(descriptor)
    transcoder["services"] = sorted({*transcoder["services"], NOOP_SERVICE})
    # The transcoder rewrites the path to the gRPC one before routing, as for every production route.
    hcm["route_config"]["virtual_hosts"][0]["routes"].insert(
        0, {"match": {"path": NOOP_GRPC_PATH}, "route": {"cluster": NOOP_CLUSTER, "timeout": timeout}})
    # The GET is public; the POST falls to the gateway's catch-all rule, which requires a token.
    _filter(filters, _JWT)["rules"].insert(0, {"match": {"path": NOOP_GET_PATH}})
    return config


def _http_filters(bootstrap: dict) -> list[dict]:
    return bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"]


def per_user_limit(bootstrap: dict) -> tuple[int, int] | None:
    """(requests per second, burst) of the gateway's per-user token bucket, None when it has none."""
    for f in _http_filters(bootstrap):
        if f["name"] == _RATE_LIMIT:
            bucket = f["typed_config"]["descriptors"][0]["token_bucket"]
            return int(bucket["tokens_per_fill"]), int(bucket["max_tokens"])
    return None


def rewrite_envoy_argv(argv: list[str], run_dir: Path) -> tuple[list[str], dict]:
    """Envoy's command line from the suite's process spec, pointed at the bench bootstrap written into `run_dir`;
    and that bootstrap."""
    at = argv.index("-c") + 1
    production = json.loads(Path(argv[at]).read_text())
    transcoder = _filter(_http_filters(production), _TRANSCODER)
    descriptor = run_dir / "bench.pb"
    write_descriptor(Path(transcoder["proto_descriptor"]), descriptor)
    bench = with_noop_routes(production, descriptor)
    config = run_dir / "envoy-bench.json"
    config.write_text(json.dumps(bench, indent=1))
    return [*argv[:at], str(config), *argv[at + 1:]], bench
