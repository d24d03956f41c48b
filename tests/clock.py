"""A clock for tests: it stands still until a test moves it forward (shop_runtime.clock.Clock)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from psycopg import AsyncConnection


class ManualClock:
    """A clock that stands still until advanced; for tests that need expiry without waiting."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime.now(timezone.utc)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The time it was set to."""
        with self._lock:
            return self._now

    async def db_now(self, conn: AsyncConnection) -> datetime:
        """The time it was set to, whatever the database says."""
        return self.now()

    def fixed(self) -> datetime | None:
        """The time it was set to, for statements to use instead of the database's clock."""
        return self.now()

    def advance(self, seconds: float) -> None:
        """Moves the clock forward."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
