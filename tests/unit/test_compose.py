"""The deployment file: valid for docker-compose, and wiring every process of the suite."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compose(*args: str) -> str:
    return subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args],
                          check=True, capture_output=True, text=True).stdout


def test_compose_file_is_valid():
    compose("config", "-q")


def test_compose_runs_every_process_of_the_suite():
    assert set(compose("config", "--services").split()) == {
        "postgres", "consul", "catalog", "cart", "inventory", "order", "gateway-sync", "gateway"}


def test_services_advertise_a_reachable_address_and_listen_on_all_interfaces():
    resolved = compose("config")
    assert resolved.count("ADVERTISE_ADDRESS: auto") == 4
    assert resolved.count("GRPC_HOST: 0.0.0.0") == 4
