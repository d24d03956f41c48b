"""Point-in-time recovery of the Patroni cluster (devstack.backup): a base backup, paid orders before and after a
switchover and after an instant T, then a fresh cluster recovered to T from the backup and the WAL archive."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from devstack import supervise
from devstack.backup import RESTORED_SCOPE, restore, take_backup
from devstack.patroni import patronictl
from tests.audit import audit_dsn
from tests.e2e.replicated import cluster_suite
from tests.e2e.sale import Sale, paid_orders_kept, restock

pytestmark = pytest.mark.e2e


async def _batch(suite, seconds: float) -> Sale:
    """Shoppers buying for about `seconds` + 8 s (Sale.run's ramp and tail), then none: nothing in flight after."""
    sale = Sale(suite)
    await sale.run(lambda: asyncio.sleep(seconds))
    statuses = Counter(f"{step} {status}" for _t, step, status in sale.failures())
    print(f"  batch: {len(sale.paid)} orders paid, {len(sale.failures())} answers outside 200/409/429 "
          f"{dict(statuses)} {sale.details[:2]}")
    return sale


def _db_now(dsn: str):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT now()").fetchone()[0]


def _switch_and_wait_archived(dsn: str, timeout: float = 120.0) -> str:
    """Closes the current WAL segment and waits until the archiver has copied it: the archive then holds every
    commit made before."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            archived, failed = conn.execute(
                "SELECT last_archived_wal, failed_count FROM pg_stat_archiver").fetchone()
            if archived is not None and archived >= segment:
                return segment
            time.sleep(0.5)
    raise AssertionError(f"segment {segment} not archived after {timeout:.0f}s (last {archived}, {failed} failed)")


@pytest.fixture
def on_cluster(tmp_path_factory, tls_dir):
    with cluster_suite(tmp_path_factory.mktemp("pitr"), tls_dir, replicas=1,
                       env=dict(CONSUL_CHECK_INTERVAL="1s", CATALOG_CACHE_SECONDS="0")) as suite:
        yield suite


# The cluster, three sale batches, a switchover and a restore: minutes on a busy 2-core machine.
@pytest.mark.timeout(900)
async def test_a_restore_to_an_instant_keeps_every_order_paid_before_it_and_none_after(on_cluster):
    suite, run_dir = on_cluster, on_cluster.run_dir
    # Outside pytest's temporary root: the restored members run as Postgres's own user (devstack.patroni).
    backups_dir = Path(tempfile.mkdtemp(prefix="shop-test-backups-"))
    restore_home = Path(tempfile.mkdtemp(prefix="shop-test-restore-"))
    restored = None
    try:
        cluster = suite.cluster
        assert cluster.archive_dir is not None
        restock(suite, 10_000)
        started = time.monotonic()
        backup = take_backup(cluster, backups_dir)
        print(f"\nbase backup {backup.path.name} from {backup.source} in {time.monotonic() - started:.1f}s: "
              f"timeline {backup.timeline}, WAL {backup.start_lsn}..{backup.end_lsn}, "
              f"{sum(f.stat().st_size for f in backup.path.iterdir()) / 1e6:.1f} MB")
        assert {"base.tar.gz", "pg_wal.tar.gz", "backup_manifest", "manifest.json"} <= {
            f.name for f in backup.path.iterdir()}

        before_switchover = await _batch(suite, 3)

        # A switchover: from now on the new primary archives, on timeline 2, into the same folder.
        old = cluster.primary()
        assert old is not None
        result = patronictl(cluster, "switchover", "--leader", old.name, "--force")
        assert result.returncode == 0, result.stdout + result.stderr
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and ((new := cluster.primary()) in (None, old) or not cluster.healthy()):
            time.sleep(0.5)
        assert new is not None and new != old, cluster.cluster_state()
        print(f"switchover {old.name} -> {new.name}: {cluster.cluster_state()}")

        after_switchover = await _batch(suite, 3)
        target = _db_now(suite.dsn)  # T: no shopper is buying now (the batch is over, the next not begun)
        time.sleep(1)
        after_target = await _batch(suite, 3)
        segment = _switch_and_wait_archived(suite.dsn)
        archive = sorted(p.name for p in cluster.archive_dir.iterdir())
        print(f"T = {target.isoformat()}; archive: {len(archive)} files up to {segment}; history files "
              f"{[n for n in archive if n.endswith('.history')]}")
        # The new primary archived its timeline's history and segments into the folder the old one used.
        assert "00000002.history" in archive and any(n.startswith("00000002") and len(n) == 24 for n in archive)
        before, after = before_switchover.paid | after_switchover.paid, after_target.paid
        assert before_switchover.paid and after_switchover.paid and after, "every batch must have paid orders"
        paid_orders_kept(after_switchover, suite.dsn)  # the switchover lost nothing acknowledged
        paid_orders_kept(before_switchover, suite.dsn)

        # The services are done; the source's data tier stays up only as the archive's owner.
        supervise.stop(suite.supervisor)
        started = time.monotonic()
        restored = restore(target, archive_dir=cluster.archive_dir, home=restore_home, backup=backup, members=2,
                           stdout=(run_dir / "restored.log").open("ab"), stderr=subprocess.STDOUT)
        took = time.monotonic() - started
        with psycopg.connect(restored.dsn, autocommit=True) as conn:
            timeline = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
            found = dict(conn.execute("SELECT id::text, status FROM orders.orders WHERE id::text = ANY(%s)",
                                      (sorted(before | after),)).fetchall())
            conn.execute("CREATE TABLE restored_takes_writes (x int)")  # promoted: a primary, not a standby
        print(f"restored to T in {took:.1f}s (2 members, scope {RESTORED_SCOPE}, timeline {timeline}): "
              f"{len(before)} orders paid before T, {sum(found.get(o) == 'PAID' for o in before)} PAID there; "
              f"{len(after)} paid after T, {sum(o in found for o in after)} there")
        not_paid = {o: found.get(o, "missing") for o in before if found.get(o) != "PAID"}
        assert not not_paid, f"{len(not_paid)} orders paid before T are not PAID: {sorted(not_paid.items())[:10]}"
        assert not after & found.keys(), f"orders of after T present: {sorted(after & found.keys())[:10]}"
        assert timeline > 2  # recovery followed the switchover's timeline, then promotion began a new one
        assert audit_dsn(restored.dsn) == []
    finally:
        if restored is not None:
            restored.stop()
        shutil.rmtree(restore_home, ignore_errors=True)
        shutil.rmtree(backups_dir, ignore_errors=True)
