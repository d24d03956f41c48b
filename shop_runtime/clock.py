"""Time as the services see it: the system clock, or a manual one that tests move forward."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    """Tells the current time, timezone-aware in UTC."""

    def now(self) -> datetime: ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        """Now, in UTC."""
        return datetime.now(timezone.utc)


class ManualClock:
    """A clock that stands still until advanced; for tests that need expiry without waiting."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime.now(timezone.utc)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The time it was set to."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Moves the clock forward."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
