"""Time as the services see it: expiry decided by the database's clock (tests have a manual one: tests/clock.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol

from psycopg import AsyncConnection


class Clock(Protocol):
    """Tells the time: `now` for stamps, `db_now` for decisions of expiry."""

    def now(self) -> datetime: ...

    async def db_now(self, conn: AsyncConnection) -> datetime: ...

    def fixed(self) -> datetime | None:
        """The instant a statement should take as now, or None for the database's own clock_timestamp()."""
        ...


class SystemClock:
    """The database's clock for every decision of expiry, so replicas on several hosts agree; the machine's for stamps."""

    def now(self) -> datetime:
        """Now by this machine, in UTC: for stamps that decide nothing (when a line was added)."""
        return datetime.now(timezone.utc)

    async def db_now(self, conn: AsyncConnection) -> datetime:
        """Now by the database, read at this point of the transaction (after the locks taken before it).

        clock_timestamp(), not now(): now() is the transaction's start, before any lock was waited for.
        """
        cur = await conn.execute("SELECT clock_timestamp()")
        row = await cur.fetchone()
        assert row is not None  # a SELECT without FROM has one row
        return row[0]

    def fixed(self) -> datetime | None:
        """None: statements read the database's clock themselves, after the locks taken before them."""
        return None
