"""`python -m suite_audit.exporter`: the suite audit every AUDIT_INTERVAL seconds, its result as Prometheus gauges."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass

import consul.aio
import psycopg
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from shop_runtime import consul as shop_consul
from shop_runtime.config import ConfigError, _advertise_address, env_float, env_int, env_str
from shop_runtime.logs import setup_logging
from suite_audit.checks import CHECKS, INVENTORY_TAG, audit_suite

_LOGGER = logging.getLogger(__name__)

# The Consul service the exporter registers as; Prometheus scrapes it with job="audit".
SERVICE = "audit"
# Every check's tag: each has a findings series from the start, so "no findings" reads 0, not absent.
TAGS = [INVENTORY_TAG, *dict.fromkeys(check.tag for check in CHECKS)]


@dataclass(frozen=True)
class Settings:
    """What the exporter reads from its environment, once, at start."""

    database_url: str
    interval: float
    timeout: float
    metrics_host: str
    metrics_port: int
    advertise_address: str
    consul_host: str
    consul_port: int
    consul_token: str

    @classmethod
    def from_env(cls) -> "Settings":
        address = env_str("CONSUL_HTTP_ADDR", "127.0.0.1:8500").removeprefix("http://")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"environment variable CONSUL_HTTP_ADDR={address!r} is not host:port")
        interval = env_float("AUDIT_INTERVAL", 60.0, minimum=0.1, maximum=86_400.0)
        return cls(
            database_url=env_str("DATABASE_URL"),
            interval=interval,
            # A run that takes longer than this is abandoned (and counted as failed to run), so a stuck query
            # shows as the audit not running rather than as a silent pause.
            timeout=env_float("AUDIT_TIMEOUT", max(30.0, 2 * interval), minimum=1.0),
            metrics_host=env_str("METRICS_HOST", "0.0.0.0"),
            # 0: a port the OS picks (Consul is told which).
            metrics_port=env_int("METRICS_PORT", 0, minimum=0, maximum=65535),
            advertise_address=_advertise_address(env_str("ADVERTISE_ADDRESS", "127.0.0.1")),
            consul_host=host,
            consul_port=int(port),
            consul_token=os.environ.get("CONSUL_HTTP_TOKEN", "").strip(),
        )


class AuditMetrics:
    """The exporter's gauges, in a registry of their own (only the audit's figures are served)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.findings = Gauge("suite_audit_findings", "Violations the last successful audit found, by check",
                              ["check"], registry=self.registry)
        self.last_success = Gauge("suite_audit_last_success_timestamp_seconds",
                                  "When the last successful audit finished (Unix time; 0: none yet)",
                                  registry=self.registry)
        self.duration = Gauge("suite_audit_duration_seconds", "How long the last audit took, successful or not",
                              registry=self.registry)
        self.failed = Gauge("suite_audit_last_run_failed",
                            "1 if the last audit could not run to its end (database unreachable, query failed,"
                            " timed out), else 0", registry=self.registry)
        for tag in TAGS:
            self.findings.labels(tag).set(0)

    def record(self, violations: list[str], seconds: float) -> None:
        """A finished audit: its violations counted by check (the tag that starts each line)."""
        counts = Counter(line.split(" ", 1)[0] for line in violations)
        for tag in set(TAGS) | set(counts):
            self.findings.labels(tag).set(counts.get(tag, 0))
        self.duration.set(seconds)
        self.failed.set(0)
        self.last_success.set(time.time())

    def record_failure(self, seconds: float) -> None:
        """An audit that could not run: the findings keep their last value, the staleness alert takes over."""
        self.duration.set(seconds)
        self.failed.set(1)


async def audit_once(dsn: str) -> list[str]:
    """One audit of the database of `dsn`, on a connection of its own (so a failover between runs is no matter)."""
    async with await psycopg.AsyncConnection.connect(dsn, application_name="suite_audit.exporter",
                                                     connect_timeout=10) as conn:
        return await audit_suite(conn)


async def run_once(settings: Settings, metrics: AuditMetrics) -> None:
    """Runs the audit once and records its result, or its failure."""
    started = time.perf_counter()
    try:
        violations = await asyncio.wait_for(audit_once(settings.database_url), settings.timeout)
    except Exception:
        seconds = time.perf_counter() - started
        _LOGGER.exception("suite audit could not run (after %.3f s)", seconds)
        metrics.record_failure(seconds)
        return
    seconds = time.perf_counter() - started
    metrics.record(violations, seconds)
    if violations:
        # The lines say which rows; the first few are enough to start from (`make audit` prints them all).
        _LOGGER.warning("suite audit: %d violation(s) in %.3f s, e.g. %s", len(violations), seconds,
                        "; ".join(violations[:3]))
    else:
        _LOGGER.info("suite audit: clean in %.3f s", seconds)


async def register(client: consul.aio.Consul, settings: Settings, service_id: str, port: int) -> None:
    """Registers the metrics port as service `audit`, tagged `metrics` (how the target sync finds scrape targets),
    checked over HTTP on /metrics, retrying while the agent starts (the exporter may start beside it)."""
    await shop_consul.register_metrics(client, name=SERVICE, service_id=service_id,
                                       address=settings.advertise_address, port=port, metrics_port=port,
                                       check_url=f"http://{settings.advertise_address}:{port}/metrics")


async def serve(settings: Settings) -> None:
    """Serves the gauges, registers in Consul, audits every interval until SIGTERM or SIGINT, then deregisters."""
    metrics = AuditMetrics()
    server, _thread = start_http_server(settings.metrics_port, settings.metrics_host, registry=metrics.registry)
    port = server.server_port
    _LOGGER.info("audit metrics on :%d/metrics, every %.1f s", port, settings.interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    client = shop_consul.connect(settings.consul_host, settings.consul_port, settings.consul_token)
    service_id = f"{SERVICE}-{socket.gethostname()}-{os.getpid()}"
    try:
        await register(client, settings, service_id, port)
        while not stop.is_set():
            began = loop.time()
            await run_once(settings, metrics)
            # The next run starts one interval after this one began (or at once if this one took longer).
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, began + settings.interval - loop.time()))
            except asyncio.TimeoutError:
                pass
    finally:
        await shop_consul.deregister(client, service_id)
        await client.close()
        server.shutdown()


def main() -> None:
    """Entry point: DATABASE_URL, AUDIT_INTERVAL, METRICS_PORT, CONSUL_HTTP_ADDR (docs/monitoring.md)."""
    setup_logging(SERVICE)
    try:
        settings = Settings.from_env()
    except ConfigError as err:
        raise SystemExit(f"suite audit exporter: {err}") from None
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
