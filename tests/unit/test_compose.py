"""The deployment file: valid for docker-compose, and wiring every process of the suite."""

import os
import re
import subprocess
from pathlib import Path

from devstack.secrets import compose_variables

ROOT = Path(__file__).resolve().parents[2]
# What `make secrets` writes into .env: a token per identity, distinct, the management token and the Postgres
# cluster's passwords.
TOKENS = {name: f"token-of-{name.lower()}" for name in compose_variables()}


def compose(*args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """docker-compose's answer about the deployment file, with the secrets of `env` (default: TOKENS) as the
    environment gives them, which wins over any .env of this checkout."""
    run = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args],
                         env={**os.environ, **(TOKENS if env is None else env)},
                         check=check, capture_output=True, text=True)
    return run.stdout if check else run.stdout + run.stderr


def test_compose_file_is_valid():
    compose("config", "-q")


def test_compose_runs_every_process_of_the_suite():
    assert set(compose("config", "--services").split()) == {
        "pg1", "pg2", "pg3", "consul", "consul-setup", "catalog", "cart", "inventory", "order", "gateway-sync", "gateway",
        "prometheus", "prometheus-targets"}


def test_services_advertise_a_reachable_address_and_listen_on_all_interfaces():
    resolved = compose("config")
    assert resolved.count("ADVERTISE_ADDRESS: auto") == 5  # and gateway-sync, which registers itself for Prometheus
    assert resolved.count("GRPC_HOST: 0.0.0.0") == 4


def test_without_the_secrets_the_deployment_refuses_to_start_and_says_what_to_run():
    env = {k: v for k, v in os.environ.items() if k not in TOKENS}
    out = compose("config", "-q", env={**env, "COMPOSE_PROJECT_NAME": "shop"}, check=False)
    if (ROOT / ".env").exists():  # a developer's own secrets would fill them in
        return
    assert "run make secrets" in out


def test_every_service_calls_over_mutual_tls_and_has_a_consul_token_of_its_own():
    resolved = compose("config")
    assert resolved.count("TLS_DIR: /tls") == 4
    assert sorted(re.findall(r"CONSUL_HTTP_TOKEN: (token-of-\S+)", resolved)) == sorted(
        [f"token-of-consul_token_{s}" for s in ("catalog", "cart", "inventory", "order", "gateway_sync", "prometheus")]
        + ["token-of-consul_master_token"])  # the last one: consul-setup's
    assert "--tls-dir /tls" in resolved  # Envoy too


def test_consul_runs_with_acls_and_its_api_is_published_on_loopback_only():
    resolved = compose("config")
    assert 'master = "token-of-consul_master_token"' in resolved
    assert "- 127.0.0.1:8500:8500/tcp" in resolved
    agent = (ROOT / "consul" / "compose.d" / "agent.hcl").read_text()
    assert 'default_policy = "deny"' in agent and "enable_agent_tls_for_checks = true" in agent
