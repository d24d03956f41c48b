"""`python -m devstack run|audit|db-status`: the local suite (`make run`), the suite audit of its database
(`make audit`), and its database's members, roles, timelines and lag (`make db-status`)."""

import argparse
import asyncio
import os

from devstack import run
from devstack.postgres import embedded_dsn
from devstack.stack import DSN_FILE, ROOT

# Where `make run PG_MEMBERS=N` keeps its Patroni members (devstack.run).
CLUSTER_HOME = ROOT / ".run" / "patroni"


def database_url() -> tuple[object, str]:
    """The database of `make run`: DATABASE_URL, else the one the last `make run` used (its Patroni cluster's DSN, or
    its embedded server's), else the embedded server's data in .run/ (started if need be, with the server)."""
    dsn = os.environ.get("DATABASE_URL", "").strip()
    if dsn:
        return None, dsn
    if DSN_FILE.exists() and "target_session_attrs" in (recorded := DSN_FILE.read_text().strip()):
        return None, recorded
    return embedded_dsn(ROOT / ".run" / "pgdata")


def db_status() -> int:
    """Prints the cluster's members (patronictl list: role, state, timeline, lag), or the one server's state."""
    from devstack.patroni import Cluster, patronictl

    if not CLUSTER_HOME.exists():
        _server, dsn = database_url()
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            (version, recovery, lsn), = conn.execute(
                "SELECT version(), pg_is_in_recovery(), pg_current_wal_lsn()::text").fetchall()
        print(f"one Postgres server (not a cluster: `make run PG_MEMBERS=3` runs one)\n  {version}\n"
              f"  in recovery: {recovery}; WAL at {lsn}\n  {dsn}")
        return 0
    result = patronictl(Cluster.load(CLUSTER_HOME), "list", "--extended")
    print(result.stdout, end="")
    if result.returncode:
        print(result.stderr, end="")
    return result.returncode


def main() -> None:
    """Dispatches the sub-command."""
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["run", "audit", "db-status"],
                        help="run: the whole suite in the foreground; audit: check its database across all services; "
                             "db-status: its database's members and their state")
    args = parser.parse_args()
    if args.command == "run":
        run.main()
        return
    if args.command == "db-status":
        raise SystemExit(db_status())
    from suite_audit.checks import run as audit

    _server, dsn = database_url()
    raise SystemExit(asyncio.run(audit(dsn)))


if __name__ == "__main__":
    main()
