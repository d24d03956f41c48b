"""Service settings from the environment: defaults for a local run, loud errors naming the variable."""

import pytest

from shop_runtime.config import ConfigError, ServiceSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("DATABASE_URL", "CATALOG_DATABASE_URL", "GRPC_PORT", "CONSUL_HTTP_ADDR", "SHUTDOWN_GRACE_SECONDS"):
        monkeypatch.delenv(var, raising=False)


def test_missing_database_url_names_the_variable():
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        ServiceSettings.from_env("catalog", 50051)


def test_defaults_work_for_a_local_run(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql:///shop")
    s = ServiceSettings.from_env("catalog", 50051)
    assert (s.grpc_port, s.consul_host, s.consul_port, s.database_url) == (50051, "127.0.0.1", 8500, "postgresql:///shop")


def test_per_service_dsn_wins(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql:///shop")
    monkeypatch.setenv("CATALOG_DATABASE_URL", "postgresql:///catalog_db")
    assert ServiceSettings.from_env("catalog", 1).database_url == "postgresql:///catalog_db"
    assert ServiceSettings.from_env("inventory", 1).database_url == "postgresql:///shop"


@pytest.mark.parametrize(
    "var, value",
    [("GRPC_PORT", "http"), ("GRPC_PORT", "70000"), ("CONSUL_HTTP_ADDR", "nohost"), ("SHUTDOWN_GRACE_SECONDS", "-1")],
)
def test_malformed_values_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv("DATABASE_URL", "postgresql:///shop")
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        ServiceSettings.from_env("catalog", 50051)


def test_consul_address_accepts_a_scheme(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql:///shop")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "http://consul.internal:8501")
    s = ServiceSettings.from_env("cart", 50052)
    assert (s.consul_host, s.consul_port) == ("consul.internal", 8501)
