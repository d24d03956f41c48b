"""Consul's entries turned into Prometheus file_sd targets (monitoring.targets), on plain data."""

from __future__ import annotations

import json

from monitoring.targets import file_name, scraped_services, target_groups, write_atomically


def entry(service: str, sid: str, *, port: int, tags=("grpc", "v1", "metrics"), meta=None, address="10.0.0.5",
          node="node-a", status="passing") -> dict:
    """One instance as /v1/health/service/<name> lists it."""
    return {
        "Node": {"Node": node, "Address": "10.9.9.9"},
        "Service": {"ID": sid, "Service": service, "Tags": list(tags), "Address": address, "Port": port,
                    "Meta": meta},
        "Checks": [{"Status": status}],
    }


def test_every_instance_is_a_target_with_its_labels():
    groups = target_groups([
        entry("cart", "cart-h-2", port=50052, meta={"metrics_port": "41002"}),
        entry("cart", "cart-h-1", port=50060, meta={"metrics_port": "41001"}, node="node-b"),
    ])
    assert groups == [
        {"targets": ["10.0.0.5:41001"],
         "labels": {"job": "cart", "instance": "cart-h-1", "node": "node-b", "__metrics_path__": "/metrics"}},
        {"targets": ["10.0.0.5:41002"],
         "labels": {"job": "cart", "instance": "cart-h-2", "node": "node-a", "__metrics_path__": "/metrics"}},
    ]


def test_a_failing_instance_stays_a_target_so_prometheus_marks_it_down():
    groups = target_groups([entry("order", "order-1", port=1, meta={"metrics_port": "2"}, status="critical")])
    assert [g["labels"]["instance"] for g in groups] == ["order-1"]


def test_path_and_port_from_metadata_else_the_service_port_and_metrics():
    envoy = entry("envoy", "envoy-h-9901", port=9000, tags=["metrics"],
                  meta={"metrics_port": "9901", "metrics_path": "/stats/prometheus"})
    api = entry("postgres-api", "pg-1", port=8008, tags=["metrics"], meta=None, address="")
    groups = target_groups([envoy]) + target_groups([api])
    assert groups[0]["targets"] == ["10.0.0.5:9901"]
    assert groups[0]["labels"]["__metrics_path__"] == "/stats/prometheus"
    # No metadata: the service's own port, the default path; no address of its own: its node's.
    assert groups[1]["targets"] == ["10.9.9.9:8008"]
    assert groups[1]["labels"]["__metrics_path__"] == "/metrics"


def test_instances_without_the_metrics_tag_are_not_targets():
    assert target_groups([entry("catalog", "c-1", port=1, tags=["grpc", "v1"], meta={"metrics_port": "5"})]) == []


def test_ipv6_addresses_are_bracketed():
    groups = target_groups([entry("catalog", "c-1", port=1, meta={"metrics_port": "5"}, address="fd00::5")])
    assert groups[0]["targets"] == ["[fd00::5]:5"]


def test_only_services_tagged_metrics_are_watched():
    catalog = {"consul": [], "catalog": ["grpc", "v1", "metrics"], "legacy": ["grpc"], "envoy": ["metrics"],
               "postgres-api": None}
    assert scraped_services(catalog) == {"catalog", "envoy"}


def test_files_are_written_whole_and_named_safely(tmp_path):
    path = tmp_path / file_name("odd/name")
    assert path.name == "odd_name.json"
    groups = target_groups([entry("cart", "cart-1", port=1, meta={"metrics_port": "7"})])
    write_atomically(path, groups)
    assert json.loads(path.read_text()) == groups
    assert [p.name for p in tmp_path.iterdir()] == ["odd_name.json"], "no temporary file left behind"
