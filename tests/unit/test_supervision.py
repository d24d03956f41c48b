"""A worker's hold on its supervisor (shop_runtime.supervision): only an ancestor can be it, and a bad pid is refused."""

import asyncio
import os
import subprocess
import sys

import pytest

from shop_runtime import supervision
from shop_runtime.config import ConfigError


async def test_the_supervisor_is_watched_while_it_runs():
    # This process's parent stands for a worker's supervisor: it runs on, so the watch does not end.
    supervisor = supervision.Supervisor(os.getppid())
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(supervisor.ended(), 0.3)
    finally:
        supervisor.close()


async def test_a_process_that_is_no_ancestor_is_taken_for_a_supervisor_gone():
    # What a worker finds when its supervisor ended before it looked and another process took the pid.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        await asyncio.wait_for(supervision.Supervisor(stranger.pid).ended(), 1)
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_a_bad_supervisor_pid_is_an_error_naming_the_variable(value, monkeypatch):
    monkeypatch.setenv(supervision.SUPERVISOR_PID_VAR, value)
    with pytest.raises(ConfigError, match=supervision.SUPERVISOR_PID_VAR):
        supervision.Supervisor.of_this_worker()


def test_no_supervisor_pid_no_supervisor(monkeypatch):
    monkeypatch.delenv(supervision.SUPERVISOR_PID_VAR, raising=False)
    assert supervision.Supervisor.of_this_worker() is None
