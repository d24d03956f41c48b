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
