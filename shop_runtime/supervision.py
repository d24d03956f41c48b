"""Worker processes of a service: started and stopped together by their supervisor, and ended when it ends."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
from pathlib import Path

import honcho.manager
from honcho.printer import Printer

from shop_runtime.config import METRICS_OFF, ConfigError, ServiceSettings

_LOGGER = logging.getLogger(__name__)

# The supervisor's pid, set in each worker's environment: a worker's parent is not its supervisor (honcho runs
# every worker under an intermediate process of its own, which outlives a supervisor killed alone).
SUPERVISOR_PID_VAR = "WORKER_SUPERVISOR_PID"

# How often a worker looks for its supervisor where the kernel cannot tell it when a process ends (no pidfd).
SUPERVISOR_CHECK_INTERVAL = 1.0

# The exit codes honcho's Manager reports when it stopped its processes on SIGINT/SIGTERM.
_STOPPED_ON_SIGNAL = (130, 143)


def worker_env(settings: ServiceSettings, index: int) -> dict[str, str]:
    """The environment of worker `index` (1..workers): this process's, made into one full instance."""
    env = dict(os.environ)
    env.update(
        WORKERS="1",
        WORKER_INDEX=str(index),
        # The first worker takes the service's own port, so whatever is configured with it still
        # reaches the service; the others take any free port, which they register in Consul.
        GRPC_PORT=str(settings.grpc_port if index == 1 else 0),
        # The pool size derived here from the service's budget and the worker count, not again there.
        DB_POOL_MAX_SIZE=str(settings.pool_max_size),
        METRICS_PORT=worker_metrics_port(settings.metrics_port, index),
        **{SUPERVISOR_PID_VAR: str(os.getpid())},
    )
    return env


def worker_metrics_port(port: int | None, index: int) -> str:
    """METRICS_PORT of worker `index`: off stays off, any free port stays any free port (each worker its own), and a
    configured port is the first worker's, the next ones the following ports."""
    if port is None:
        return METRICS_OFF
    return str(port + index - 1 if port else 0)


def supervise(settings: ServiceSettings) -> int:
    """Runs `settings.workers` copies of this process's own command as workers until SIGTERM/SIGINT, which
    each of them gets to stop gracefully; when one worker ends, the others are stopped too. Returns the
    exit code: 0 for a stop asked for by a signal, else that of the worker that ended first."""
    # Every worker may take its full drain (server stop, then handlers) before honcho kills it; its
    # own wait (5 s, counted from the first worker's exit) is a module setting honcho reads at stop.
    honcho.manager.KILL_WAIT = max(honcho.manager.KILL_WAIT, 2 * settings.shutdown_grace_seconds + 5)
    # Workers' lines already name the worker (`catalog.2`); honcho's own prefix would only repeat it.
    manager = honcho.manager.Manager(printer=Printer(sys.stderr, prefix=False))
    command = "exec " + shlex.join([sys.executable, *sys.orig_argv[1:]])
    for index in range(1, settings.workers + 1):
        manager.add_process(f"{settings.service_name}.{index}", command, env=worker_env(settings, index))
    _LOGGER.info("%s: %d workers, each with a pool of up to %d connections", settings.service_name,
                 settings.workers, settings.pool_max_size)
    manager.loop()
    code = manager.returncode
    if code in _STOPPED_ON_SIGNAL:
        return 0
    # A worker killed by a signal reports minus its number; a shell's convention is 128 plus it.
    return 128 - code if code < 0 else code


def _is_ancestor(pid: int) -> bool:
    """Whether `pid` is this process's parent, its parent's parent, and so on up to the first process."""
    current = os.getppid()
    while current not in (0, 1, pid):
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except FileNotFoundError:  # that ancestor ended while it was being read
            return False
        # The fields after the command's name (which may hold spaces and parentheses): state, then parent pid.
        current = int(stat.rpartition(")")[2].split()[1])
    return current == pid


class Supervisor:
    """The supervisor that started this worker, held from the worker's start, so that the worker ends when its
    supervisor ends, however it ends: a stop it was asked for, or a SIGKILL of the supervisor alone, which the
    workers (in sessions of their own, under honcho's intermediate processes) would otherwise outlive."""

    def __init__(self, pid: int):
        self.pid = pid
        self._fd: int | None = None
        self._gone = False
        try:
            # A pidfd stays with the process it was opened for, whatever later takes its pid, and becomes
            # readable when that process ends: the event loop is told, nothing polls.
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._gone = True
        except (AttributeError, OSError) as err:  # no pidfd here (another OS, an old kernel, a seccomp filter)
            _LOGGER.warning("cannot watch the supervisor (pid %s) with a pidfd (%s): looking every %ss",
                            pid, err, SUPERVISOR_CHECK_INTERVAL)
        # A supervisor that ended before it was opened, its pid since taken by another process, is no ancestor.
        if not self._gone and not _is_ancestor(pid):
            self._gone = True

    @classmethod
    def of_this_worker(cls) -> "Supervisor | None":
        """The supervisor named in this process's environment (SUPERVISOR_PID_VAR); None when it has none."""
        value = os.environ.get(SUPERVISOR_PID_VAR, "").strip()
        if not value:
            return None
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"environment variable {SUPERVISOR_PID_VAR}={value!r} is not a process id")
        return cls(int(value))

    async def ended(self) -> None:
        """Returns once the supervisor has ended (at once if it already had when this worker opened it)."""
        try:
            if self._gone:
                return
            if self._fd is None:
                while _is_ancestor(self.pid):
                    await asyncio.sleep(SUPERVISOR_CHECK_INTERVAL)
                return
            loop = asyncio.get_running_loop()
            ended = loop.create_future()

            def readable() -> None:
                if not ended.done():
                    ended.set_result(None)

            loop.add_reader(self._fd, readable)
            try:
                await ended
            finally:
                loop.remove_reader(self._fd)
        finally:
            self.close()

    def close(self) -> None:
        """Lets go of the supervisor's pidfd."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


async def stop_with(supervisor: Supervisor, stop: asyncio.Event) -> None:
    """Stops this worker, gracefully (it leaves Consul and drains), once `supervisor` has ended."""
    await supervisor.ended()
    _LOGGER.warning("the supervisor (pid %s) is gone: stopping", supervisor.pid)
    stop.set()
