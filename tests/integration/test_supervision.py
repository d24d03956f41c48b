"""The local suite under supervisord (`make run`): replicas of a service each in Consul under its own id; one that
is killed is started again by the supervisor, the others keep running; stopping the supervisor stops all."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from devstack import supervise
from devstack.prepare import prepare
from devstack.procs import Supervised, consul_ready, on_free_ports, wait_until, wait_up
from devstack.stack import Ports, ProcessSpec, consul_process, parse_replicas, passing_instances, service_process, SERVICE_MODULES
from tests.proctable import state


def pids(ports: Ports, service: str) -> set[int]:
    """The pids of the passing instances of `service` (an instance id ends with its process's pid)."""
    return {int(e["Service"]["ID"].rsplit("-", 1)[1]) for e in passing_instances(ports, service)}


def test_a_killed_replica_is_started_again_and_the_others_keep_running(fresh_dsn, tmp_path):
    asyncio.run(prepare(fresh_dsn, demo=False))
    run_dir = tmp_path / "supervisor"

    def start(ports: Ports) -> Supervised:
        specs = [consul_process(ports)] + [
            service_process("inventory", ports, fresh_dsn, port=0, name=f"inventory-{n}", CONSUL_CHECK_INTERVAL="1s")
            for n in (1, 2, 3)]
        started = Supervised(specs, run_dir, tmp_path / "supervisord.log")
        try:
            wait_up([started], lambda: consul_ready(ports.consul_addr), 30, "consul under supervisord")
        except BaseException:
            supervise.stop(started.popen)
            raise
        return started

    # Consul on ports picked free, picked again when one was taken before it bound it.
    ports, supervised = on_free_ports(start, Ports.free, "consul under supervisord")
    proc = supervised.popen
    try:
        def three(without: int = 0) -> set[int] | None:
            found = pids(ports, "inventory")
            return found if len(found) == 3 and without not in found else None

        first = wait_until(three, 60, what="three replicas passing, each with its own id")
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        after = wait_until(lambda: three(without=victim), 60,
                           what="the killed replica started again (and its old instance dropped)")
        assert first - {victim} <= after, "the other replicas kept running"
        assert proc.poll() is None, "supervisord itself runs on"
        wait_until(lambda: supervise.ctl(run_dir, "status").count("RUNNING") == 4, 15,
                   what="supervisord's programs all running again")
    finally:
        assert supervise.stop(proc) == 0
    log_text = (tmp_path / "supervisord.log").read_text(errors="replace")
    assert all(not os.path.exists(f"/proc/{pid}") for pid in after), log_text[-2000:]


def test_replicas_setting():
    assert parse_replicas("") == {}
    assert parse_replicas("3") == dict.fromkeys(SERVICE_MODULES, 3)
    assert parse_replicas("cart=2, inventory=3") == {"cart": 2, "inventory": 3}
    for bad in ("0", "17", "cart=0", "basket=2", "cart", "cart=two"):
        with pytest.raises(ValueError):
            parse_replicas(bad)


def test_an_orphan_of_a_program_is_adopted_and_reaped_by_supervisord(tmp_path):
    """A program whose child outlives it (as Patroni's postmaster, started detached) leaves an orphan: supervisord
    adopts it, and reaps it once it dies, so no zombie keeps its pid "alive" to a postmaster.pid check."""
    pid_file = tmp_path / "orphan.pid"
    # The program starts a child that outlives it by a few seconds, writes its pid and exits; supervisord then starts
    # it again (that it does is not what this test looks at).
    script = (f"import os, time, pathlib\n"
              f"if os.fork() == 0:\n"
              f"    pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
              f"    time.sleep(4)\n"
              f"    os._exit(0)\n"
              f"time.sleep(1)\n")
    (tmp_path / "parent.py").write_text(script)  # a file: supervisord's command= is one line
    spec = ProcessSpec(name="parent", argv=[sys.executable, str(tmp_path / "parent.py")], env=dict(os.environ))
    proc = supervise.start([spec], tmp_path / "supervisor", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        orphan = wait_until(lambda: pid_file.exists() and pid_file.read_text() and int(pid_file.read_text()), 30,
                            what="the program's child started")
        adopted = wait_until(lambda: (state(orphan) or ("", 0))[1] == proc.pid or state(orphan) is None, 10,
                             what="the orphan adopted")
        assert adopted and state(orphan) is not None, "the orphan ended before its parent did"
        assert state(orphan)[1] == proc.pid, "the orphan's parent is supervisord"
        wait_until(lambda: state(orphan) is None, 20, what="the orphan reaped, not left a zombie")
    finally:
        supervise.stop(proc)
