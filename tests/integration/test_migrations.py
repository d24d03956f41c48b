"""Migrations against real Postgres: applied once, recorded, serialised across replicas, all or nothing."""

import asyncio

import psycopg
import pytest

from devstack.prepare import SPECS, migrate_all
from inventory_svc.server import SPEC as INVENTORY
from shop_runtime.db import MigrationError, migrate


def _rows(dsn, query, *params):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


VERSIONS = sorted(p.stem for p in INVENTORY.migrations.glob("*.sql"))


async def test_applied_once_and_recorded(fresh_dsn):
    assert len(VERSIONS) >= 2
    assert await migrate(fresh_dsn, "inventory", INVENTORY.migrations) == VERSIONS
    assert await migrate(fresh_dsn, "inventory", INVENTORY.migrations) == []
    assert _rows(fresh_dsn, "SELECT version FROM inventory.schema_migrations ORDER BY version") == [
        (v,) for v in VERSIONS]


async def test_concurrent_replicas_apply_each_file_exactly_once(fresh_dsn):
    results = await asyncio.gather(*(migrate(fresh_dsn, "inventory", INVENTORY.migrations) for _ in range(8)))
    assert sorted(results) == [[]] * 7 + [VERSIONS]
    assert _rows(fresh_dsn, "SELECT count(*) FROM inventory.schema_migrations") == [(len(VERSIONS),)]


async def test_each_service_owns_its_schema(fresh_dsn):
    await migrate_all(fresh_dsn)
    schemas = {r[0] for r in _rows(fresh_dsn, "SELECT schema_name FROM information_schema.schemata")}
    assert {s.schema for s in SPECS} <= schemas
    tables = set(_rows(fresh_dsn, "SELECT table_schema, table_name FROM information_schema.tables"
                                  " WHERE table_schema = ANY(%s)", [s.schema for s in SPECS]))
    assert {("catalog", "products"), ("catalog", "categories"), ("inventory", "stock"), ("inventory", "ledger")} <= tables
    assert {("cart", "schema_migrations"), ("orders", "schema_migrations")} <= tables


async def test_a_changed_applied_file_is_refused(fresh_dsn, tmp_path):
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE mig_a.t (id int);")
    await migrate(fresh_dsn, "mig_a", tmp_path)
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE mig_a.t (id bigint);")
    with pytest.raises(MigrationError, match="0001_t.sql"):
        await migrate(fresh_dsn, "mig_a", tmp_path)


async def test_a_failing_file_leaves_nothing_behind(fresh_dsn, tmp_path):
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE mig_b.ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE mig_b.bad (id no_such_type);")
    with pytest.raises(psycopg.errors.UndefinedObject):
        await migrate(fresh_dsn, "mig_b", tmp_path)
    assert _rows(fresh_dsn, "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'mig_b'") == [(0,)]
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE mig_b.fixed (id int);")
    assert await migrate(fresh_dsn, "mig_b", tmp_path) == ["0001_ok", "0002_bad"]
