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


def test_one_parser_reads_ints_and_floats_and_names_the_variable():
    from shop_runtime.config import env_float, env_int
    env = {"N": "7", "F": "0.5", "BAD": "x", "NEG": "-1"}
    assert env_int("N", 1, environ=env) == 7 and env_float("F", 1.0, environ=env) == 0.5
    assert env_int("UNSET", 3, environ=env) == 3
    with pytest.raises(ConfigError, match=r"BAD='x' is not an integer"):
        env_int("BAD", 1, environ=env)
    with pytest.raises(ConfigError, match=r"BAD='x' is not a number"):
        env_float("BAD", 1.0, environ=env)
    with pytest.raises(ConfigError, match=r"NEG=-1.0 is below 0.0"):
        env_float("NEG", 1.0, environ=env)
    with pytest.raises(ConfigError, match=r"N=7 is outside 0..5"):
        env_int("N", 1, minimum=0, maximum=5, environ=env)


def test_each_services_settings_keep_their_variables_and_defaults(monkeypatch):
    from cart_svc.server import CartSettings
    from catalog_svc.server import CatalogSettings
    from inventory_svc.server import InventorySettings
    from order_svc.server import OrderSettings
    for var in ("CART_PRICE_CACHE_SECONDS", "RECONCILE_MIN_AGE_SECONDS", "RECONCILE_INTERVAL_SECONDS",
                "ORDER_SWEEP_INTERVAL_SECONDS", "CATALOG_CACHE_SECONDS", "CATALOG_COUNT_SECONDS",
                "CATALOG_CACHE_ENTRIES", "INVENTORY_SWEEP_INTERVAL_SECONDS"):
        monkeypatch.delenv(var, raising=False)
    assert CartSettings.from_env() == CartSettings(1.0, 60, 30.0)
    assert OrderSettings.from_env() == OrderSettings(60, 1.0, 30.0)
    assert CatalogSettings.from_env() == CatalogSettings(1.0, 30.0, 1000)
    assert InventorySettings.from_env() == InventorySettings(1.0)
    monkeypatch.setenv("RECONCILE_MIN_AGE_SECONDS", "0")
    monkeypatch.setenv("ORDER_SWEEP_INTERVAL_SECONDS", "0.25")
    assert (OrderSettings.from_env().reconcile_min_age_seconds, OrderSettings.from_env().sweep_interval_seconds) == (0, 0.25)
    monkeypatch.setenv("CART_PRICE_CACHE_SECONDS", "soon")
    with pytest.raises(ConfigError, match="CART_PRICE_CACHE_SECONDS"):
        CartSettings.from_env()
