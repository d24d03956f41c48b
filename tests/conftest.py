"""Session fixtures: the real Postgres and Consul every integration and e2e test runs against."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack.certs import ensure_certs
from devstack.postgres import start_embedded
from devstack.stack import Ports, consul_process
from devstack.procs import Proc, consul_ready, wait_until
from devstack.postgres import create_database, dsn_for


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    """Where the logs of processes the tests start go."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory):
    """A Postgres server to create test databases on: TEST_DATABASE_URL's, else an embedded one for the session."""
    external = os.environ.get("TEST_DATABASE_URL", "").strip()
    if external:
        yield external
        return
    server = start_embedded(tmp_path_factory.mktemp("pg") / "data")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def fresh_dsn(pg_admin_dsn) -> str:
    """The DSN of a new, empty database for one test."""
    return dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))


@pytest.fixture(scope="session")
def ports() -> Ports:
    """The ports of the session's suite, picked free so a running `make run` is no obstacle."""
    return Ports.free()


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory) -> Path:
    """The session's own CA and a certificate for every identity of the suite (devstack.certs)."""
    return ensure_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def consul(ports, log_dir, tls_dir):
    """A real Consul dev agent for the session, able to check services over mutual TLS; yields its HTTP address."""
    proc = Proc(consul_process(ports, tls_dir), log_dir)
    try:
        wait_until(lambda: proc.popen.poll() is not None or consul_ready(ports.consul_addr), 30, what="consul")
        assert proc.popen.poll() is None, proc.log()
        yield ports.consul_addr
    finally:
        proc.stop()
