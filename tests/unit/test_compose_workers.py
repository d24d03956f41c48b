"""The deployment file runs every service with worker processes, within what its Postgres accepts."""

import re
from pathlib import Path

import yaml

from shop_runtime.config import DB_CONNECTIONS
from tests.unit.test_compose import compose

PATRONI_SETTINGS = Path(__file__).resolve().parents[2] / "deploy" / "patroni" / "patroni.yml"

SERVICES = 4


def test_every_service_runs_a_worker_per_core_unless_told_otherwise():
    assert compose("config").count("WORKERS: auto") == SERVICES


def test_postgres_accepts_every_services_connection_budget_with_room_to_spare():
    # Every member of the cluster has the same limit (a standby may not have fewer than its primary).
    settings = yaml.safe_load(PATRONI_SETTINGS.read_text())
    limit = settings["bootstrap"]["dcs"]["postgresql"]["parameters"]["max_connections"]
    assert "max_connections" not in compose("config")  # no member's own setting overrides the cluster's
    assert int(limit) >= 2 * SERVICES * DB_CONNECTIONS


def test_the_stop_grace_period_covers_a_workers_whole_drain():
    resolved = compose("config")
    grace = max(float(g) for g in re.findall(r"SHUTDOWN_GRACE_SECONDS: '?\"?(\d+(?:\.\d+)?)", resolved))
    periods = [float(p) for p in re.findall(r"stop_grace_period: (\d+(?:\.\d+)?)s", resolved)]
    assert len(periods) >= SERVICES
    assert min(periods) > 2 * grace, "a worker may drain for the grace, then finish handlers for as long"
