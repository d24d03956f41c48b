"""Base backups of the Patroni cluster and its restore to a point in time into a fresh cluster (`make backup`, `make restore`)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from devstack import supervise
from devstack.patroni import (SCOPE, Cluster, Member, _own, as_postgres_user, bin_dir, start_data_tier)
from devstack.stack import DSN_FILE, ROOT, Ports, free_port

_LOGGER = logging.getLogger(__name__)

# Where `make backup` puts a folder per base backup (named by its UTC start), and `make restore` its clusters.
BACKUPS_DIR = ROOT / ".run" / "backups"
RESTORES_DIR = ROOT / ".run" / "restores"
# Where `make run PG_MEMBERS=N` keeps its members (and, beside them, the WAL archive): devstack.__main__'s CLUSTER_HOME.
CLUSTER_HOME = ROOT / ".run" / "patroni"
MANIFEST = "manifest.json"
# A restored cluster is a cluster of its own: its own Patroni scope (so its Consul keys and service are its own even
# on a Consul shared with the running cluster), its own Consul, its own ports and its own WAL archive.
RESTORED_SCOPE = f"{SCOPE}-restored"
STAMP = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class Backup:
    """One base backup: its folder (base.tar.gz, pg_wal.tar.gz, backup_manifest) and what its manifest says."""

    path: Path
    started_at: datetime  # the source's clock when the backup began
    finished_at: datetime  # the source's clock once it ended: the earliest instant it can be recovered to
    start_lsn: str
    end_lsn: str
    timeline: int
    system_identifier: str  # the cluster it belongs to (a WAL archive of another cluster cannot complete it)
    source: str  # the member it was taken from, and its role then

    @classmethod
    def load(cls, path: Path) -> "Backup":
        data = json.loads((path / MANIFEST).read_text())
        return cls(path, datetime.fromisoformat(data["started_at"]), datetime.fromisoformat(data["finished_at"]),
                   data["start_lsn"], data["end_lsn"], int(data["timeline"]), str(data["system_identifier"]),
                   data["source"])

    def write(self) -> None:
        data = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items() if k != "path"}
        (self.path / MANIFEST).write_text(json.dumps(data, indent=1) + "\n")


def _source(cluster: Cluster, prefer_standby: bool) -> tuple[Member, str]:
    """The member to copy: a streaming standby when one is (it spares the primary's disk during a sale), else the
    primary."""
    state = cluster.cluster_state() or {}
    by_name = {m.name: m for m in cluster.members}
    members = state.get("members", [])
    if prefer_standby:
        for m in members:
            if m.get("role") in ("replica", "sync_standby") and m.get("state") == "streaming" and m["name"] in by_name:
                return by_name[m["name"]], m["role"]
    primary = cluster.wait_primary(30)
    return primary, "leader"


def take_backup(cluster: Cluster, dest: Path = BACKUPS_DIR, *, prefer_standby: bool = True) -> Backup:
    """A base backup of `cluster` with pg_basebackup (tar format, gzip, the WAL it needs streamed beside it) into a
    new folder under `dest`, with a manifest (MANIFEST) of its start and end."""
    member, role = _source(cluster, prefer_standby)
    with psycopg.connect(cluster.member_dsn(member, "postgres"), autocommit=True) as conn:
        (started, sysid), = conn.execute(
            "SELECT now(), (SELECT system_identifier FROM pg_control_system())::text").fetchall()
    started = started.astimezone(timezone.utc)
    dest.mkdir(parents=True, exist_ok=True)
    folder = dest / started.strftime(STAMP)
    while folder.exists():  # two backups within a second
        folder = folder.with_name(folder.name + "-1")
    folder.mkdir()
    # pg_basebackup runs as the user Postgres runs as (when this is root): the restore's bootstrap, run by Patroni as
    # that user, must read what it wrote.
    _own([dest, folder])
    argv = [*as_postgres_user(), str(bin_dir() / "pg_basebackup"), "-h", member.host, "-p", str(member.pg_port),
            "-U", "postgres", "-D", str(folder), "--format=tar", "--gzip", "--wal-method=stream",
            "--checkpoint=fast", f"--label=shop {folder.name}", "--no-password"]
    _LOGGER.info("base backup of %s (%s) into %s", member.name, role, folder)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"pg_basebackup failed ({done.returncode}): {done.stderr.strip()}")
    with psycopg.connect(cluster.member_dsn(member, "postgres"), autocommit=True) as conn:
        (finished,), = conn.execute("SELECT now()").fetchall()
    # pg_basebackup's own manifest (it checks the copy with pg_verifybackup) says which WAL the backup needs.
    wal = json.loads((folder / "backup_manifest").read_text())["WAL-Ranges"][-1]
    backup = Backup(folder, started, finished.astimezone(timezone.utc), wal["Start-LSN"], wal["End-LSN"],
                    int(wal["Timeline"]), sysid, f"{member.name} ({role}) {member.host}:{member.pg_port}")
    backup.write()
    return backup


def backups(dest: Path = BACKUPS_DIR) -> list[Backup]:
    """The backups under `dest`, oldest first."""
    found = [Backup.load(p.parent) for p in dest.glob(f"*/{MANIFEST}")] if dest.exists() else []
    return sorted(found, key=lambda b: b.finished_at)


def backup_for(target: datetime, dest: Path = BACKUPS_DIR) -> Backup:
    """The newest backup that ended before `target` (recovery can stop only after a backup's end)."""
    before = [b for b in backups(dest) if b.finished_at < target]
    if not before:
        raise LookupError(f"no base backup under {dest} ended before {target.isoformat()}")
    return before[-1]


@dataclass(frozen=True)
class RestoredCluster(Cluster):
    """A cluster whose first member bootstraps from a base backup and the WAL archive (Patroni's custom bootstrap),
    the others cloning it as usual."""

    bootstrap: dict[str, Any] = field(default_factory=dict)

    def config(self, member: Member) -> dict[str, Any]:
        conf = super().config(member)
        conf["bootstrap"].update(self.bootstrap)
        return conf


def _unpack_script(home: Path, backup: Backup) -> Path:
    """The custom bootstrap's command: unpacks the backup into the data directory Patroni gives it (--datadir)."""
    script = home / "unpack-backup.sh"
    base, wal = shlex.quote(str(backup.path / "base.tar.gz")), shlex.quote(str(backup.path / "pg_wal.tar.gz"))
    script.write_text(f"""#!/bin/sh
# Patroni's custom bootstrap of the restored cluster: the base backup {backup.path.name} into --datadir.
set -e
for arg in "$@"; do case "$arg" in --datadir=*) datadir="${{arg#--datadir=}}";; esac; done
mkdir -p "$datadir" && chmod 700 "$datadir"
tar -xzf {base} -C "$datadir"
tar -xzf {wal} -C "$datadir/pg_wal"
""")
    script.chmod(0o755)
    return script


def restored_cluster(target: datetime, backup: Backup, archive_dir: Path, home: Path, members: int = 3,
                     consul_addr: str = "") -> RestoredCluster:
    """The settings of a fresh cluster of `members` members under `home`, on free ports, that recovers `backup`
    and the WAL of `archive_dir` up to `target` and then promotes. It archives into a folder of its own: its new
    timeline's WAL must not mix with the source's archive."""
    home.mkdir(parents=True, exist_ok=True)
    script = _unpack_script(home, backup)
    _own([home, script])
    recovery = {
        # Read only: the source's archive stays as it was.
        "restore_command": f"cp {archive_dir}/%f %p",
        "recovery_target_time": target.isoformat(),
        "recovery_target_timeline": "latest",  # through the source's failovers (their .history files)
        "recovery_target_action": "promote",
    }
    bootstrap = {"method": "pitr", "pitr": {"command": str(script), "recovery_conf": recovery}}
    pg = [free_port() for _ in range(members)]
    api = [free_port() for _ in range(members)]
    cluster = RestoredCluster.local(home, members, consul_addr, pg, api, scope=RESTORED_SCOPE,
                                    archive_dir=home / "wal-archive", bootstrap=bootstrap)
    assert isinstance(cluster, RestoredCluster)
    return cluster


@dataclass
class Restored:
    """A restored cluster running: its settings, DSN, Consul ports and the supervisord of it all."""

    cluster: RestoredCluster
    dsn: str
    ports: Ports
    backup: Backup
    data_tier: subprocess.Popen

    def stop(self) -> None:
        supervise.stop(self.data_tier)


def restore(target: datetime, *, archive_dir: Path, home: Path, backup: Backup | None = None,
            backups_dir: Path = BACKUPS_DIR, members: int = 3, timeout: float = 600.0, **popen: Any) -> Restored:
    """Starts a fresh cluster (a Consul of its own and `members` Patroni members, scope RESTORED_SCOPE) recovered
    to `target` from `backup` (else the newest one ended before it) and the WAL archive; returns once every member
    is healthy. The caller stops it with Restored.stop."""
    if target.tzinfo is None:
        raise ValueError("the target time needs its time zone (an offset such as +00)")
    backup = backup or backup_for(target, backups_dir)
    if backup.finished_at >= target:
        raise ValueError(f"backup {backup.path.name} ended at {backup.finished_at.isoformat()}, after the target")
    ports = Ports.free()
    cluster = restored_cluster(target, backup, archive_dir, home, members, ports.consul_addr)
    _LOGGER.info("restoring %s to %s into %s", backup.path.name, target.isoformat(), home)

    def recovered(limit: float) -> None:
        # A recovery that fails (the archive ends before the target, say) makes Patroni set the data directory
        # aside as data.failed and try again, on and on: the first failure is the answer.
        deadline = time.monotonic() + limit
        while cluster.primary() is None:
            if failed := sorted(home.glob("pg*/data.failed")):
                raise RuntimeError(f"the recovery failed: {_failure(failed[0])}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no restored primary after {limit:.0f}s: {cluster.cluster_state()}")
            time.sleep(1)

    dsn, proc = start_data_tier(cluster, ports, home, None, timeout=timeout, first=recovered, **popen)
    return Restored(cluster, dsn, ports, backup, proc)


def _failure(data_dir: Path) -> str:
    """What Postgres said when its recovery in `data_dir` failed: the last FATAL of its log, and a hint."""
    lines = [line for log in sorted((data_dir / "log").glob("*.log")) for line in log.read_text().splitlines()]
    fatal = next((line for line in reversed(lines) if "FATAL" in line), "no FATAL in the server log")
    hint = ""
    if "before configured recovery target" in fatal:
        hint = (" (the WAL archive does not reach the target yet: the primary archives a segment once it is full "
                "or after archive_timeout, 60 s; wait, or run SELECT pg_switch_wal() on it)")
    return fatal + hint + f"; server log in {data_dir / 'log'}"


def parse_time(text: str) -> datetime:
    """An instant as `make restore TARGET_TIME=...` takes it: ISO 8601 with its offset ('2026-12-02 13:00:00+00')."""
    text = text.strip()
    if text[-3:-2] in "+-" and text[-3:].lstrip("+-").isdigit():
        text += ":00"  # Postgres's short offset (+00), which Python 3.11 reads only as +00:00
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: give an offset, as in '2026-12-02 13:00:00+00'")
    return when


def _cluster_of_last_run() -> Cluster:
    """The cluster of the last `make run PG_MEMBERS=N`; SystemExit with the reason when that run had none."""
    recorded = DSN_FILE.read_text() if DSN_FILE.exists() else ""
    if "target_session_attrs" not in recorded or not CLUSTER_HOME.exists():
        raise SystemExit(
            "make backup: the last `make run` did not run a Patroni cluster. Backups and point-in-time recovery need "
            "the cluster's continuous WAL archive, which the one embedded server does not keep (it runs without "
            "archive_mode). Run `make run PG_MEMBERS=3`; for a copy of the one server, use pg_dump.")
    return Cluster.load(CLUSTER_HOME)


def main(argv: list[str] | None = None) -> int:
    """`python -m devstack.backup backup|restore|list`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m devstack.backup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backup", help="a base backup of the last `make run PG_MEMBERS=N`'s cluster")
    sub.add_parser("list", help="the backups kept")
    rest = sub.add_parser("restore", help="a fresh cluster recovered to --target-time")
    rest.add_argument("--target-time", required=True, help="ISO 8601 with an offset: '2026-12-02 13:00:00+00'")
    rest.add_argument("--backup", default="", help="a backup folder; default: the newest ended before the target")
    rest.add_argument("--members", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "backup":
        b = take_backup(_cluster_of_last_run())
        print(f"backup {b.path}\n  from {b.source}, {b.started_at.isoformat()} to {b.finished_at.isoformat()}, "
              f"timeline {b.timeline}, WAL {b.start_lsn} to {b.end_lsn}")
        return 0
    if args.command == "list":
        for b in backups():
            print(f"{b.path.name}  ended {b.finished_at.isoformat()}  timeline {b.timeline}  end LSN {b.end_lsn}")
        return 0
    try:
        target = parse_time(args.target_time)
    except ValueError as err:
        raise SystemExit(f"make restore: TARGET_TIME: {err}") from None
    source = Cluster.load(CLUSTER_HOME) if CLUSTER_HOME.exists() else None
    if source is None or source.archive_dir is None:
        raise SystemExit(f"make restore: no WAL archive: {CLUSTER_HOME} holds no cluster of `make run PG_MEMBERS=N`")
    backup = Backup.load(Path(args.backup)) if args.backup else None
    RESTORES_DIR.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix=f"{target.astimezone(timezone.utc).strftime(STAMP)}-", dir=RESTORES_DIR))
    log = (home / "data-tier.log").open("ab")
    restored = restore(target, archive_dir=source.archive_dir, home=home, backup=backup, members=args.members,
                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (home / "database_url").write_text(restored.dsn + "\n")
    print(f"restored {restored.backup.path.name} and the WAL archive to {target.isoformat()} into {home}\n"
          f"  DSN: {restored.dsn}\n  Consul: {restored.ports.consul_addr} (scope {RESTORED_SCOPE})\n"
          f"  the suite on it, in another terminal: DATABASE_URL='{restored.dsn}' make run\n"
          f"  its audit: DATABASE_URL='{restored.dsn}' make audit\n"
          "Ctrl-C stops it (its data stays in that folder).", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: restored.data_tier.send_signal(signal.SIGTERM))
    try:
        restored.data_tier.wait()
    except KeyboardInterrupt:
        pass
    finally:
        restored.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
