"""The deployment file's Postgres: a Patroni cluster of three members on the compose Consul, which the services reach
through a DSN naming every member, with the settings of the local cluster (devstack.patroni)."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg.conninfo
import yaml

from devstack import patroni
from devstack.consul_setup import RULES
from tests.unit.test_compose import ROOT, compose
from tests.unit.test_compose_workers import PATRONI_SETTINGS

MEMBERS = ("pg1", "pg2", "pg3")
SUITE = ("catalog", "cart", "inventory", "order")


@functools.cache
def resolved() -> dict[str, Any]:
    """The deployment as docker-compose resolves it, with the secrets of test_compose.TOKENS."""
    return yaml.safe_load(compose("config"))


def test_postgres_is_three_patroni_members_each_with_a_volume_of_its_own():
    services = resolved()["services"]
    members = {name: s for name, s in services.items() if s.get("build", {}).get("target") == "patroni"}
    assert sorted(members) == list(MEMBERS)
    data = {}
    for name, member in members.items():
        assert member["environment"]["PATRONI_NAME"] == name
        assert member["environment"]["PATRONI_POSTGRESQL_CONNECT_ADDRESS"] == f"{name}:5432"
        assert member["environment"]["PATRONI_RESTAPI_CONNECT_ADDRESS"] == f"{name}:8008"
        (volume,) = [v for v in member["volumes"] if v.endswith(":/var/lib/postgresql:rw")]
        data[name] = volume.split(":")[0]
    assert len(set(data.values())) == 3, data
    assert set(data.values()) <= set(resolved()["volumes"])  # named volumes, not one host folder
    # No other Postgres beside them.
    assert not [name for name, s in services.items() if str(s.get("image", "")).startswith("postgres")]


def test_the_members_image_runs_patroni_from_pypi_with_consul_on_the_official_postgres():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stage = dockerfile[dockerfile.index("AS patroni"):dockerfile.index("\nFROM ", dockerfile.index("AS patroni"))]
    # Installed from the lock `make patroni` installs from (tests/unit/test_locked_build.py checks that lock).
    assert "COPY requirements/patroni.txt /tmp/patroni.txt" in stage
    assert "--require-hashes --no-build-isolation -r /tmp/patroni.txt" in stage
    assert "patroni[consul,psycopg3]" in (ROOT / "requirements" / "patroni.in").read_text()
    assert re.search(r"^FROM postgres:(\d+) AS patroni$", dockerfile, re.M)
    assert "deploy/patroni/patroni.yml" in stage and "USER postgres" in stage
    # The same major version as the embedded binaries of `make run` and the tests.
    (major,) = re.findall(r"^FROM postgres:(\d+) AS patroni$", dockerfile, re.M)
    assert _embedded_major() == major


def _embedded_major() -> str:
    out = subprocess.run([str(patroni.bin_dir() / "postgres"), "--version"], capture_output=True, text=True,
                         check=True).stdout
    return re.search(r"(\d+)\.\d+", out).group(1)  # type: ignore[union-attr]


def test_each_member_talks_to_the_compose_consul_with_patronis_own_token():
    services = resolved()["services"]
    settings = yaml.safe_load(PATRONI_SETTINGS.read_text())
    assert settings["consul"]["host"] == "consul:8500" and settings["consul"]["register_service"] is True
    assert settings["scope"] == patroni.SCOPE and settings["namespace"] == "/service/"
    for name in MEMBERS:
        env = services[name]["environment"]
        assert env["PATRONI_CONSUL_TOKEN"] == "token-of-consul_token_patroni"
        assert "consul" in services[name]["depends_on"]
    # consul-setup makes that token, with Patroni's policy.
    assert services["consul-setup"]["environment"]["CONSUL_TOKEN_PATRONI"] == "token-of-consul_token_patroni"
    assert 'key_prefix "service/postgres/"' in RULES["patroni"] and 'service "postgres"' in RULES["patroni"]
    # Its own token: no service nor job of the suite holds it.
    holders = [n for n, s in services.items() if "token-of-consul_token_patroni" in str(s.get("environment"))]
    assert sorted(holders) == sorted([*MEMBERS, "consul-setup"])


def test_the_members_secrets_come_from_make_secrets():
    env = resolved()["services"]["pg1"]["environment"]
    assert env["PATRONI_SUPERUSER_PASSWORD"] == "token-of-postgres_superuser_password"
    assert env["PATRONI_REPLICATION_PASSWORD"] == "token-of-postgres_replication_password"
    assert env["PATRONI_RESTAPI_PASSWORD"] == "token-of-patroni_api_password"
    # Between containers, every connection needs a password; only a member's own socket is trusted.
    hba = yaml.safe_load(PATRONI_SETTINGS.read_text())["postgresql"]["pg_hba"]
    assert [rule for rule in hba if rule.startswith("host") and not rule.endswith("scram-sha-256")] == []


def test_every_service_reaches_the_primary_through_a_dsn_naming_every_member():
    services = resolved()["services"]
    for name in SUITE:
        dsn = psycopg.conninfo.conninfo_to_dict(services[name]["environment"]["DATABASE_URL"])
        assert dsn["host"].split(",") == list(MEMBERS)
        assert dsn["port"].split(",") == ["5432"] * 3
        assert dsn["target_session_attrs"] == "read-write"
        assert dsn["connect_timeout"] == str(patroni.CONNECT_TIMEOUT_SECONDS)
        assert (dsn["dbname"], dsn["user"], dsn["password"]) == ("shop", "shop", "shop")


def test_no_service_depends_on_a_single_member():
    for name, service in resolved()["services"].items():
        on = set(service.get("depends_on", {})) & set(MEMBERS)
        assert on in (set(), set(MEMBERS)), f"{name} depends on {sorted(on)} alone"


def test_the_compose_cluster_has_the_local_clusters_settings():
    """Strict synchronous replication, failsafe mode, the TTL and loop of devstack.patroni, and what a member's
    Postgres needs of them, the same in both."""
    compose_dcs = yaml.safe_load(PATRONI_SETTINGS.read_text())["bootstrap"]["dcs"]
    home = Path("/nonexistent")
    local = patroni.Cluster.local(home, 3, "127.0.0.1:8500", [1, 2, 3], [4, 5, 6])
    local_dcs = local.config(local.members[0])["bootstrap"]["dcs"]
    for key in ("ttl", "loop_wait", "retry_timeout", "maximum_lag_on_failover", "synchronous_mode",
                "synchronous_mode_strict", "synchronous_node_count", "failsafe_mode"):
        assert compose_dcs[key] == local_dcs[key], key
    assert compose_dcs["synchronous_mode_strict"] is True and compose_dcs["failsafe_mode"] is True
    for key in ("use_pg_rewind", "use_slots"):
        assert compose_dcs["postgresql"][key] == local_dcs["postgresql"][key], key
    ours, theirs = compose_dcs["postgresql"]["parameters"], local_dcs["postgresql"]["parameters"]
    for key in ("max_connections", "wal_level", "wal_log_hints", "synchronous_commit", "fsync", "max_wal_senders",
                "max_replication_slots", "wal_keep_size"):
        assert str(ours[key]).lower() == str(theirs[key]).lower(), key


def test_the_suites_database_is_made_once_by_the_first_primary():
    settings = yaml.safe_load(PATRONI_SETTINGS.read_text())
    script = ROOT / "deploy" / "patroni" / "post_bootstrap.sh"
    assert settings["bootstrap"]["post_bootstrap"] == "/etc/patroni/post_bootstrap.sh"
    assert script.stat().st_mode & 0o111, "Patroni runs it as a program"
    text = script.read_text()
    assert "CREATE ROLE shop LOGIN" in text and "CREATE DATABASE shop OWNER shop" in text
