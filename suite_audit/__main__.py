"""`python -m suite_audit`: audits the suite's database (DATABASE_URL), one line per violation, exit 1 if any."""

import asyncio
import sys

from shop_runtime.config import ConfigError, env_str
from suite_audit.checks import run


def main() -> None:
    """Entry point: DATABASE_URL names the one database holding all four schemas."""
    try:
        dsn = env_str("DATABASE_URL")
    except ConfigError as err:
        print(f"suite audit: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(asyncio.run(run(dsn)))


if __name__ == "__main__":
    main()
