"""WORKERS and the pool sizes derived from it: parsing, the budget shared by workers, each worker's environment."""

import pytest

from shop_runtime import config
from shop_runtime.config import DB_CONNECTIONS, MAX_WORKERS, ConfigError, ServiceSettings, parse_workers, pool_size_for
from shop_runtime.supervision import worker_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("WORKERS", "WORKER_INDEX", "DB_CONNECTIONS", "DB_POOL_MAX_SIZE", "GRPC_PORT", "METRICS_PORT",
                "CATALOG_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql:///shop")


@pytest.mark.parametrize("raw, expected", [("", 1), ("  ", 1), ("1", 1), ("3", 3), (" 2 ", 2), (str(MAX_WORKERS), MAX_WORKERS)])
def test_worker_counts(raw, expected):
    assert parse_workers(raw) == expected


def test_auto_is_the_number_of_usable_cores(monkeypatch):
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert parse_workers("auto") == 3
    assert parse_workers("AUTO") == 3


def test_auto_stays_within_the_limit(monkeypatch):
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: set(range(4 * MAX_WORKERS)))
    assert parse_workers("auto") == MAX_WORKERS


@pytest.mark.parametrize("raw", ["0", "-1", str(MAX_WORKERS + 1), "two", "1.5", "auto2"])
def test_bad_worker_counts_name_the_variable(raw):
    with pytest.raises(ConfigError, match="WORKERS"):
        parse_workers(raw)


def test_a_service_started_by_hand_is_one_process_with_the_whole_budget():
    s = ServiceSettings.from_env("catalog", 50051)
    assert (s.workers, s.worker_index, s.pool_max_size, s.process_name) == (1, 0, DB_CONNECTIONS, "catalog")


@pytest.mark.parametrize("budget, workers, expected", [(20, 1, 20), (20, 2, 10), (20, 3, 6), (20, 4, 5),
                                                       (10, 20, 2), (1, 1, 2)])
def test_each_pool_is_its_share_of_the_budget_never_below_two(budget, workers, expected):
    assert pool_size_for(budget, workers) == expected


def test_the_budget_is_shared_by_the_workers(monkeypatch):
    monkeypatch.setenv("WORKERS", "4")
    monkeypatch.setenv("DB_CONNECTIONS", "40")
    s = ServiceSettings.from_env("cart", 50052)
    assert (s.workers, s.pool_max_size) == (4, 10)


def test_an_explicit_pool_size_wins_over_the_budget(monkeypatch):
    monkeypatch.setenv("WORKERS", "4")
    monkeypatch.setenv("DB_CONNECTIONS", "40")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "3")
    assert ServiceSettings.from_env("cart", 50052).pool_max_size == 3


@pytest.mark.parametrize("var, value", [("DB_CONNECTIONS", "0"), ("DB_CONNECTIONS", "lots"), ("WORKER_INDEX", "-1"),
                                        ("WORKERS", "nine")])
def test_malformed_values_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        ServiceSettings.from_env("catalog", 50051)


def test_each_worker_is_one_full_instance_with_its_share(monkeypatch):
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("METRICS_PORT", "9100")
    monkeypatch.setenv("GRPC_PORT", "50051")
    s = ServiceSettings.from_env("catalog", 50051)
    envs = [worker_env(s, i) for i in (1, 2, 3)]
    assert [e["WORKERS"] for e in envs] == ["1", "1", "1"], "a worker serves; it does not start workers of its own"
    assert [e["WORKER_INDEX"] for e in envs] == ["1", "2", "3"]
    assert [e["GRPC_PORT"] for e in envs] == ["50051", "0", "0"], "the first takes the port, the others any free one"
    assert [e["METRICS_PORT"] for e in envs] == ["9100", "9101", "9102"]
    assert {e["DB_POOL_MAX_SIZE"] for e in envs} == {str(DB_CONNECTIONS // 3)}
    assert envs[0]["DATABASE_URL"] == "postgresql:///shop"

    # What a worker reads back from that environment: its share, its number, one process.
    for index, env in enumerate(envs, start=1):
        for var in ("WORKERS", "WORKER_INDEX", "GRPC_PORT", "DB_POOL_MAX_SIZE", "METRICS_PORT"):
            monkeypatch.setenv(var, env[var])
        w = ServiceSettings.from_env("catalog", 50051)
        assert (w.workers, w.worker_index, w.pool_max_size, w.process_name) == \
            (1, index, DB_CONNECTIONS // 3, f"catalog.{index}")


def test_with_port_zero_every_worker_takes_a_free_port(monkeypatch):
    monkeypatch.setenv("WORKERS", "2")
    monkeypatch.setenv("GRPC_PORT", "0")
    s = ServiceSettings.from_env("catalog", 50051)
    assert [worker_env(s, i)["GRPC_PORT"] for i in (1, 2)] == ["0", "0"]
    assert [worker_env(s, i)["METRICS_PORT"] for i in (1, 2)] == ["0", "0"], "metrics on any free port, each its own"


def test_metrics_on_a_free_port_by_default_and_off_when_off(monkeypatch):
    assert ServiceSettings.from_env("catalog", 50051).metrics_port == 0
    monkeypatch.setenv("WORKERS", "2")
    monkeypatch.setenv("METRICS_PORT", "off")
    s = ServiceSettings.from_env("catalog", 50051)
    assert s.metrics_port is None
    assert [worker_env(s, i)["METRICS_PORT"] for i in (1, 2)] == ["off", "off"]
    monkeypatch.setenv("METRICS_PORT", "-1")
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        ServiceSettings.from_env("catalog", 50051)
