"""Helpers the test tiers share: starting and stopping real processes, fresh databases."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from devstack.stack import ProcessSpec, http_get


class Proc:
    """A process a test started, logging to a file, stopped (and reaped) by the test."""

    def __init__(self, spec: ProcessSpec, log_dir: Path):
        self.name = spec.name
        self.log_path = log_dir / f"{spec.name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            spec.argv, env=spec.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def log(self) -> str:
        """What the process has printed so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Sends `signum` to the process."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL of its whole group after `timeout`; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Polls `predicate` until it returns something truthy, which is returned; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def create_database(admin_dsn: str, prefix: str = "shop_test") -> str:
    """Creates an empty database with a unique name; returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def dsn_for(admin_dsn: str, database: str) -> str:
    """The DSN of `database` on the server of `admin_dsn`."""
    info = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)


def consul_ready(http_addr: str) -> bool:
    """True once the agent has elected itself leader and answers."""
    try:
        status, body = http_get(f"http://{http_addr}/v1/status/leader", timeout=1)
    except OSError:
        return False
    return status == 200 and body.strip() not in (b'""', b"")
