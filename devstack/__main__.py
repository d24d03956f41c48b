"""`python -m devstack run|audit`: the local suite (`make run`), and the suite audit of its database (`make audit`)."""

import argparse
import asyncio
import os

from devstack import run
from devstack.postgres import embedded_dsn
from devstack.stack import ROOT


def main() -> None:
    """Dispatches the sub-command."""
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["run", "audit"],
                        help="run: the whole suite in the foreground; audit: check its database across all services")
    args = parser.parse_args()
    if args.command == "run":
        run.main()
        return
    from suite_audit.checks import run as audit

    # The database of `make run`: DATABASE_URL, else the embedded server's data in .run/.
    dsn = os.environ.get("DATABASE_URL", "").strip()
    server = None
    if not dsn:
        server, dsn = embedded_dsn(ROOT / ".run" / "pgdata")
    raise SystemExit(asyncio.run(audit(dsn)))


if __name__ == "__main__":
    main()
