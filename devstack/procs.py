"""Processes of the suite started one by one (tests, benchmarks), each logging to a file and stopped by its starter."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from devstack import supervise
from devstack.stack import Ports, ProcessSpec, consul_process, http_get

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# What a process prints when a port it was given is taken (Go's and Envoy's "address already in use", gRPC's
# "Failed to bind", a service's own ListenError): a start that failed so is tried again on other ports.
PORT_TAKEN = ("address already in use", "failed to bind", "cannot bind", "its port is taken")
# How much of a log a failure shows.
LOG_TAIL = 3000
# How many sets of ports a start tries before it gives up.
PORT_ATTEMPTS = 4

# What a predicate of wait_until returns.
_T = TypeVar("_T")


class _Logged:
    """A started process (`popen`) whose output goes to the file `log_path`."""

    name: str
    log_path: Path
    popen: subprocess.Popen

    def log(self) -> str:
        """What the process has printed so far."""
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = LOG_TAIL) -> str:
        """The end of its log, headed by its name, exit code and log file, for a failure's message."""
        code = self.popen.poll()
        state = "running" if code is None else f"exited with {code}"
        return f"--- {self.name} ({state}; {self.log_path})\n{self.log()[-chars:]}"

    def port_taken(self) -> bool:
        """Whether it failed because a port it was given was taken."""
        text = self.log().lower()
        return any(sign in text for sign in PORT_TAKEN)


class Proc(_Logged):
    """A process started on its own, logging to a file, stopped (and reaped) by whoever started it."""

    def __init__(self, spec: ProcessSpec, log_dir: Path):
        self.name = spec.name
        self.env = spec.env
        self.log_path = log_dir / f"{spec.name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            spec.argv, env=spec.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

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


class NotUp(AssertionError):
    """Processes that did not come up; the message ends with the tail of their logs."""

    def __init__(self, what: str, procs: list[_Logged], why: str = ""):
        self.port_taken = any(p.port_taken() for p in procs)
        tails = "\n".join(p.tail() for p in procs)
        super().__init__(f"{what} did not come up{': ' + why if why else ''}\n{tails}")


class Supervised(_Logged):
    """supervisord (devstack.supervise) with `specs`, its programs' output and its own in the file `log_path`;
    stopped by whoever started it (supervise.stop(self.popen))."""

    name = "supervisord"

    def __init__(self, specs: list[ProcessSpec], run_dir: Path, log_path: Path):
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.popen = supervise.start(specs, run_dir, stdout=log, stderr=log)


def wait_up(procs: list[_Logged], ready: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Polls `ready` until it returns something truthy, which is returned. Raises NotUp, with the tails of the
    logs of `procs`, when one of them exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if dead := [p for p in procs if p.popen.poll() is not None]:
            raise NotUp(what, dead + [p for p in procs if p not in dead], "a process exited")
        if value := ready():
            return value
        if time.monotonic() > deadline:
            raise NotUp(what, procs, f"not ready after {timeout}s")
        time.sleep(interval)


def on_free_ports(start: Callable[[T], R], pick: Callable[[], T], what: str,
                  attempts: int = PORT_ATTEMPTS) -> tuple[T, R]:
    """`start(pick())`, picked again and started again while it fails with NotUp because a port was taken (between
    the pick and the process's bind, by anyone); returns (the ports, what `start` returned). `start` stops what it
    started before it raises."""
    for attempt in range(1, attempts + 1):
        ports = pick()
        try:
            return ports, start(ports)
        except NotUp as err:
            if not err.port_taken or attempt == attempts:
                raise
            _LOGGER.warning("%s: a port was taken (attempt %d of %d); trying other ports", what, attempt, attempts)
    raise AssertionError("unreachable")


def start_consul(log_dir: Path, *, ports: Ports | None = None, tls_dir: Path | None = None,
                 config_files: tuple[Path, ...] = (), timeout: float = 30.0) -> tuple[Ports, Proc]:
    """A Consul dev agent (devstack.stack.consul_process) that has elected itself leader: on `ports`, else on a set
    picked free and picked again while one of its ports turns out taken. Returns its ports and process. NotUp,
    with the tail of its log, when it does not come up."""
    def start(picked: Ports) -> Proc:
        proc = Proc(consul_process(picked, tls_dir, config_files), log_dir)
        try:
            wait_up([proc], lambda: consul_ready(picked.consul_addr), timeout, "consul")
        except BaseException:
            proc.stop()
            raise
        return proc

    if ports is not None:
        return ports, start(ports)
    return on_free_ports(start, Ports.free, "consul")
