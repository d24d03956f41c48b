"""An instance's place in Consul: health that follows whether the database answers, and a registration kept there."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol

import psycopg

from shop_runtime import consul as shop_consul
from shop_runtime.config import ServiceSettings

_LOGGER = logging.getLogger(__name__)

# How often readiness (a database round trip) is re-checked for the health service.
READINESS_INTERVAL = 2.0
# How often a service checks that Consul still has its registration.
REGISTRATION_CHECK_INTERVAL = 2.0


class HealthStatus(Protocol):
    """What readiness sets: a server's health status (shop_runtime.server.GrpcApp)."""

    async def set_serving(self, serving: bool) -> None:
        """Sets the overall and every per-service health status."""


class Readiness:
    """Whether the database answers, asked on a connection of the probe's own: a pool busy to its last
    connection (a flash sale) is a service at work, not one to take out of Consul."""

    def __init__(self, dsn: str, recovered: Callable[[], Awaitable[None]] | None = None):
        self._dsn = dsn
        # Run when the database answers again after it did not: e.g. the pool's check of its idle connections,
        # which the outage may have broken, before the service says it serves again.
        self._recovered = recovered
        self._conn: psycopg.AsyncConnection | None = None
        # The last answer: the health status the service has now.
        self.serving: bool | None = None
        # Set once the first probe has answered, either way.
        self.answered = asyncio.Event()

    async def probe(self) -> bool:
        """True if the database answers within READINESS_INTERVAL (reconnecting first if need be)."""
        try:
            async with asyncio.timeout(READINESS_INTERVAL):
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                await self._conn.execute("SELECT 1")
            return True
        except Exception as err:  # any failure to reach the database means not ready
            if self.serving is not False:
                _LOGGER.warning("database unreachable (%s): NOT_SERVING", err)
            await self.close()
            return False

    async def close(self) -> None:
        """Closes the probe's connection."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def watch(self, app: HealthStatus) -> None:
        """Keeps the health status true to whether the database answers."""
        try:
            while True:
                now = await self.probe()
                if now and self.serving is False and self._recovered is not None:
                    try:
                        await self._recovered()
                    except Exception:  # noqa: BLE001 - a failed check is the next probe's to find
                        _LOGGER.warning("checking connections after the database came back failed", exc_info=True)
                if now != self.serving:
                    await app.set_serving(now)
                    self.serving = now
                self.answered.set()
                await asyncio.sleep(READINESS_INTERVAL)
        finally:
            await self.close()


async def keep_registered(client: Any, settings: ServiceSettings, port: int, readiness: Readiness,
                          metrics_port: int | None = None) -> None:
    """Registers the instance again whenever Consul has lost it (an agent restart; a registration reaped after
    its check failed for a minute, say while the database was away) and the service serves again: the same
    registration, its metrics port (`metrics_port`, the one it serves on) included."""
    lost = False
    while True:
        await asyncio.sleep(REGISTRATION_CHECK_INTERVAL)
        if not readiness.serving:
            continue
        try:
            if await shop_consul.is_registered(client, settings.instance_id):
                lost = False
                continue
            await shop_consul.register(client, name=settings.service_name, service_id=settings.instance_id,
                                       address=settings.advertise_address, port=port,
                                       check_interval=settings.check_interval, retry_for=0, passing=True,
                                       tls=bool(settings.tls_dir), metrics_port=metrics_port)
            _LOGGER.warning("Consul had lost %s: registered again", settings.instance_id)
            lost = False
        except Exception as err:  # Consul away: try again at the next look, logged once
            if not lost:
                _LOGGER.warning("cannot reach Consul to check %s's registration (%s)", settings.instance_id, err)
            lost = True
