"""Processes of the suite started one by one (tests, benchmarks), each logging to a file and stopped by its starter."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from devstack.stack import ProcessSpec, http_get

# What a predicate of wait_until returns.
_T = TypeVar("_T")


class Proc:
    """A process started on its own, logging to a file, stopped (and reaped) by whoever started it."""

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


def wait_until(predicate: Callable[[], _T], timeout: float, interval: float = 0.2, what: str = "condition") -> _T:
    """Polls `predicate` until it returns something truthy, which is returned; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def consul_ready(http_addr: str) -> bool:
    """True once the agent has elected itself leader and answers."""
    try:
        status, body = http_get(f"http://{http_addr}/v1/status/leader", timeout=1)
    except OSError:
        return False
    return status == 200 and body.strip() not in (b'""', b"")
