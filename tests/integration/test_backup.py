"""devstack.backup on a real two-member cluster: a base backup of the primary and its manifest, the settings a
restored cluster gets, and a restore whose target the WAL archive does not reach failing at once with the reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from devstack.backup import RESTORED_SCOPE, Backup, backup_for, restore, restored_cluster, take_backup
from devstack.patroni import Cluster, bin_dir
from tests.integration.patroni_support import running_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("backup"), 2, "backup") as tier:
        yield tier.cluster, tier.dsn, tier.home


def test_a_backup_of_the_primary_has_its_wal_range_and_timeline_and_is_the_one_chosen_for_a_later_instant(cluster):
    cluster, dsn, home = cluster
    # Cluster.load reads the archive folder back from the members' settings, as `make restore` does.
    assert Cluster.load(home).archive_dir == cluster.archive_dir
    backup = take_backup(cluster, home / "backups", prefer_standby=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        (lsn, timeline), = conn.execute(
            "SELECT pg_current_wal_lsn(), (SELECT timeline_id FROM pg_control_checkpoint())").fetchall()
        sysid = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]
    print(f"\nbackup {backup.path.name} from {backup.source}: WAL {backup.start_lsn}..{backup.end_lsn}, "
          f"{backup.started_at.isoformat()}..{backup.finished_at.isoformat()}")
    assert "leader" in backup.source and backup.timeline == timeline and backup.system_identifier == sysid
    manifest = json.loads((backup.path / "manifest.json").read_text())
    assert Backup.load(backup.path) == backup and manifest["end_lsn"] == backup.end_lsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT %s::pg_lsn <= %s::pg_lsn", (backup.end_lsn, str(lsn))).fetchone() == (True,)
    # pg_basebackup's manifest checks the copy (our manifest.json is no file of the backup's own).
    verified = subprocess.run([str(bin_dir() / "pg_verifybackup"), "-n", "-i", "manifest.json", str(backup.path)],
                              capture_output=True, text=True)
    print(f"pg_verifybackup: {verified.stdout.strip()} {verified.stderr.strip()}")
    assert verified.returncode == 0
    assert backup_for(backup.finished_at + timedelta(seconds=1), home / "backups") == backup
    with pytest.raises(LookupError):
        backup_for(backup.started_at, home / "backups")


def test_a_restored_cluster_has_a_scope_and_an_archive_of_its_own_and_reads_the_source_archive(cluster):
    cluster, _dsn, home = cluster
    backup = Backup.load(next((home / "backups").iterdir()))
    restored = restored_cluster(backup.finished_at, backup, cluster.archive_dir, home / "restored-settings", 2,
                                "127.0.0.1:1")
    conf = restored.config(restored.members[0])
    assert conf["scope"] == RESTORED_SCOPE != cluster.scope
    assert restored.archive_dir != cluster.archive_dir
    assert conf["bootstrap"]["method"] == "pitr"
    recovery = conf["bootstrap"]["pitr"]["recovery_conf"]
    assert recovery["restore_command"] == f"cp {cluster.archive_dir}/%f %p"
    assert recovery["recovery_target_action"] == "promote"


def test_a_restore_past_the_end_of_the_archive_fails_at_once_with_the_reason(cluster):
    cluster, dsn, home = cluster
    backup = Backup.load(next((home / "backups").iterdir()))
    with psycopg.connect(dsn, autocommit=True) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]
    restore_home = Path(tempfile.mkdtemp(prefix="shop-test-restore-"))
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError) as err:
            # An hour ahead: no archive reaches it.
            restored = restore(now + timedelta(hours=1), archive_dir=cluster.archive_dir, home=restore_home,
                               backup=backup, members=2, timeout=300,
                               stdout=(restore_home / "log").open("ab"), stderr=subprocess.STDOUT)
            restored.stop()
        print(f"failed after {time.monotonic() - started:.1f}s: {err.value}")
        assert "recovery ended before configured recovery target was reached" in str(err.value)
        assert "pg_switch_wal" in str(err.value)
        with pytest.raises(ValueError):
            restore(backup.started_at, archive_dir=cluster.archive_dir, home=restore_home, backup=backup)
    finally:
        shutil.rmtree(restore_home, ignore_errors=True)
