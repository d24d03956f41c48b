"""The upstreams: a cluster per service with its mutual TLS, health checks and ejection, fed by file-based EDS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.limits import GatewayLimits, circuit_breakers
from shop_runtime.mtls import CA_FILE, cert_file, key_file, server_name


def upstream_tls(service: str, tls_dir: Path) -> dict[str, Any]:
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


def service_cluster(name: str, eds_dir: Path, limits: GatewayLimits, tls_dir: Path | None = None) -> dict[str, Any]:
    """The cluster of the Consul service `name`: its endpoints from `eds_dir`, over mutual TLS if `tls_dir`."""
    tls = {"transport_socket": upstream_tls(name, tls_dir)} if tls_dir else {}
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
        "circuit_breakers": circuit_breakers(limits),
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


def eds_document(cluster: str, endpoints: list[tuple[str, int]]) -> dict[str, Any]:
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
