"""Session fixtures: the real Postgres and Consul every integration and e2e test runs against."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from devstack.certs import ensure_certs
from devstack.postgres import start_embedded
from devstack.stack import Ports
from devstack.procs import start_consul
from devstack.postgres import create_database, dsn_for


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    """Where the logs of processes the tests start go."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def pg_admin_dsn():
    """A Postgres server to create test databases on: TEST_DATABASE_URL's, else an embedded one for the session."""
    external = os.environ.get("TEST_DATABASE_URL", "").strip()
    if external:
        yield external
        return
    # Not under pytest's temporary root: run as root, the server runs as a user of its own, which must be able to
    # pass through the folders above its data, and every pytest session that starts on the machine closes that root
    # to other users again (mode 0700): a session starting beside this one broke its initdb, or its running server.
    base = Path(tempfile.mkdtemp(prefix="shop-test-pg-"))
    server = start_embedded(base / "data")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_dsn(pg_admin_dsn) -> str:
    """The DSN of a new, empty database for one test."""
    return dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory) -> Path:
    """The session's own CA and a certificate for every identity of the suite (devstack.certs)."""
    return ensure_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def consul_agent(log_dir, tls_dir):
    """A real Consul dev agent for the session, able to check services over mutual TLS, on ports picked free (and
    picked again if one is taken before it binds it); yields the session's ports, Consul's among them."""
    ports, proc = start_consul(log_dir, tls_dir=tls_dir)
    try:
        yield ports
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def ports(consul_agent) -> Ports:
    """The ports of the session's suite, picked free so a running `make run` is no obstacle: the session's Consul
    listens on its own among them."""
    return consul_agent


@pytest.fixture(scope="session")
def consul(consul_agent) -> str:
    """The session's Consul agent's HTTP address."""
    return consul_agent.consul_addr
