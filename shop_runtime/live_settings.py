"""Store settings that operators change at run time, read from Consul KV and kept current by a blocking query."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from shop_runtime.config import ConfigError, parse_number
from shop_runtime.consul import WATCH_TIMEOUT_SECONDS, WATCH_WAIT

_LOGGER = logging.getLogger(__name__)

PREFIX = "shop/config/"


@dataclass(frozen=True)
class Setting:
    """An integer setting: its default and the values it may take."""

    default: int
    minimum: int
    maximum: int


# The store's live settings (API.md, "Store configuration").
STORE_SETTINGS = {
    "reservation_ttl_seconds": Setting(600, 1, 86_400),
    "payment_window_seconds": Setting(900, 1, 86_400),
    # The most units of one SKU one user may hold and buy (cart line, orders awaiting payment, paid); 0: no limit.
    "max_units_per_user": Setting(0, 0, 1_000_000),
}


def parse(name: str, raw: bytes | None, setting: Setting) -> tuple[int, str | None]:
    """The value to use for a raw KV value, and why the default was used instead, if it was."""
    if raw is None:
        return setting.default, None
    try:
        value = parse_number(f"{PREFIX}{name}", raw.decode(errors="replace").strip(), int, setting.minimum,
                             setting.maximum)
    except ConfigError as err:
        return setting.default, str(err)
    return value, None


class LiveSettings:
    """The current values of STORE_SETTINGS; a missing or malformed value is its default, with a log line."""

    def __init__(self, client: Any, settings: dict[str, Setting] | None = None,
                 timeout: float = WATCH_TIMEOUT_SECONDS):
        self._client = client
        self._timeout = timeout
        self._settings = settings or STORE_SETTINGS
        self._values = {name: s.default for name, s in self._settings.items()}
        self._complaints: dict[str, str | None] = {}
        self._task: asyncio.Task | None = None

    def get(self, name: str) -> int:
        """The setting's value now."""
        return self._values[name]

    def start(self) -> None:
        """Starts following Consul KV in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="live-settings")

    async def stop(self) -> None:
        """Stops following Consul KV."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def apply(self, entries: list[dict] | None) -> None:
        """Takes the values of a KV answer (a list of entries under PREFIX, or None when there is none)."""
        raw = {e["Key"][len(PREFIX):]: e.get("Value") for e in entries or ()}
        for name, setting in self._settings.items():
            value, complaint = parse(name, raw.get(name), setting)
            if complaint and self._complaints.get(name) != complaint:
                _LOGGER.warning("%s; using the default %s", complaint, setting.default)
            self._complaints[name] = complaint
            if value != self._values[name]:
                _LOGGER.info("setting %s is now %s", name, value)
                self._values[name] = value

    async def _watch(self) -> None:
        """Follows the settings with blocking queries, as shop_runtime.consul.Discovery follows instances: answered
        by the server the agent asks (stale), so a leader cut off from the others, or a cluster without one, does
        not hold the query; and bounded by a timeout, so a query whose answer is lost is asked again."""
        index = None
        while True:
            try:
                new_index, entries = await asyncio.wait_for(
                    self._client.kv.get(PREFIX, recurse=True, index=index, wait=WATCH_WAIT, consistency="stale"),
                    self._timeout)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Consul away: keep the values we have, try again shortly
                _LOGGER.warning("reading settings from Consul failed (%s); keeping the current values", err)
                index = None
                await asyncio.sleep(1.0)
                continue
            index = new_index if index is None or int(new_index) >= int(index) else None
            self.apply(entries)
