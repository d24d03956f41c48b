"""The deployment's Prometheus: its image, its configuration, and its target sync with a Consul token of its own."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from devstack.consul_setup import RULES
from devstack.prometheus import config, promtool_binary
from tests.unit.test_compose import ROOT, compose

DEPLOYED = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def resolved() -> dict:
    return yaml.safe_load(compose("config"))["services"]


def test_prometheus_runs_debians_package_with_its_config_rules_and_the_synced_targets():
    prometheus = resolved()["prometheus"]
    assert prometheus["build"]["target"] == "prometheus"
    mounts = {v.removeprefix(str(ROOT)) for v in prometheus["volumes"]}
    assert {"prometheus-targets:/etc/prometheus/targets:ro", "/deploy/prometheus/prometheus.yml:/etc/prometheus/"
            "prometheus.yml:ro", "/monitoring/rules:/etc/prometheus/rules:ro"} <= mounts
    assert prometheus["ports"] == ["127.0.0.1:9090:9090/tcp"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    stage = dockerfile[dockerfile.index("AS prometheus"):]
    assert re.search(r"FROM debian:bookworm\S* AS prometheus", dockerfile)
    assert "apt-get install -y --no-install-recommends prometheus" in stage.split("FROM")[0]


def test_the_target_sync_has_a_read_only_consul_token_of_its_own():
    services = resolved()
    sync = services["prometheus-targets"]
    assert sync["command"].split() == ["python", "-m", "monitoring.targets", "--out", "/targets"]
    assert sync["environment"]["CONSUL_HTTP_TOKEN"] == "token-of-consul_token_prometheus"
    assert sync["volumes"] == ["prometheus-targets:/targets:rw"]
    # consul-setup makes that token, with the `prometheus` policy: services and nodes read, nothing written.
    assert services["consul-setup"]["environment"]["CONSUL_TOKEN_PROMETHEUS"] == "token-of-consul_token_prometheus"
    assert "write" not in RULES["prometheus"] and 'service_prefix "" { policy = "read" }' in RULES["prometheus"]
    tokens = [s.get("environment", {}).get("CONSUL_HTTP_TOKEN") for name, s in services.items()
              if name != "prometheus-targets"]
    assert "token-of-consul_token_prometheus" not in tokens


def test_the_patroni_members_rest_apis_are_registered_for_prometheus():
    setup = resolved()["consul-setup"]["environment"]
    assert setup["POSTGRES_API_MEMBERS"].split(",") == ["pg1:8008", "pg2:8008", "pg3:8008"]


def test_envoy_is_registered_where_the_gateways_metrics_listener_is():
    services = resolved()
    sync = services["gateway-sync"]["command"]
    assert "--envoy-address gateway --envoy-admin-port 9902" in sync
    assert "--metrics-port 9902" in services["gateway"]["command"]
    # Its own metrics, reachable from Prometheus's container and Consul's check.
    assert services["gateway-sync"]["environment"]["METRICS_HOST"] == "0.0.0.0"


def test_the_deployed_configuration_is_a_local_runs_but_for_paths_and_intervals():
    deployed = yaml.safe_load(DEPLOYED.read_text())
    assert deployed == config(Path("/etc/prometheus/targets"), "localhost:9090", Path("/etc/prometheus/rules"), "15s")


def test_promtool_accepts_the_deployed_configuration():
    try:
        promtool = promtool_binary()
    except FileNotFoundError:
        pytest.skip("no promtool: make prometheus")
    run = subprocess.run([promtool, "check", "config", "--syntax-only", str(DEPLOYED)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_gateways_metrics_listener_passes_only_the_admins_two_read_only_paths(tmp_path):
    from devstack.stack import DESCRIPTOR
    from gateway.envoy import GatewayConfig, bootstrap

    cfg = GatewayConfig("0.0.0.0", 9000, 9901, DESCRIPTOR, tmp_path, tmp_path / "jwks.json", metrics_port=9902)
    config = bootstrap(cfg)
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1", "the admin stays on loopback"
    (listener,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "metrics"]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 9902}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert [(r["match"].get("path"), r.get("route", {}).get("cluster")) for r in routes] == [
        ("/stats/prometheus", "admin"), ("/ready", "admin"), (None, None)]
    assert all(r["match"]["headers"] == [{"name": ":method", "string_match": {"exact": "GET"}}] for r in routes[:2])
    assert routes[2]["direct_response"] == {"status": 404}
    (admin,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "admin"]
    endpoint = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert endpoint == {"address": "127.0.0.1", "port_value": 9901}
    # Without it (make run, the tests), no such listener.
    plain = bootstrap(GatewayConfig("0.0.0.0", 9000, 9901, DESCRIPTOR, tmp_path, tmp_path / "jwks.json"))
    assert [x["name"] for x in plain["static_resources"]["listeners"]] == ["rest"]
