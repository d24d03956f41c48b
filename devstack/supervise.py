"""The local suite's processes under supervisord: one that dies is started again, the others keep running."""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from devstack.stack import ProcessSpec

# supervisord's order of starting (lowest first) and, reversed, of stopping: Consul before the services that
# register in it, the gateway last.
_PRIORITY = {"consul": 10, "envoy": 30, "gateway-sync": 30}
# How long a program may take to stop on SIGTERM before it is killed: a service drains for its grace period.
STOP_WAIT_SECONDS = 40


def _value(text: str) -> str:
    """A value for supervisord's `environment=`: double-quoted, with its own escapes (and % doubled: the file
    interpolates %(name)s)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def config(specs: list[ProcessSpec], run_dir: Path) -> Path:
    """Writes supervisord's configuration for `specs` into `run_dir`; returns its path. Every program is restarted
    when it exits, its output goes to supervisord's own, and a program's environment is supervisord's plus what
    its spec sets differently."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[supervisord]", "nodaemon=true", "logfile=/dev/null", "logfile_maxbytes=0", "loglevel=info",
        f"pidfile={run_dir / 'supervisord.pid'}", "",
        "[unix_http_server]", f"file={run_dir / 'supervisor.sock'}", "",
        "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]", f"serverurl=unix://{run_dir / 'supervisor.sock'}", "",
    ]
    for spec in specs:
        changed = {k: v for k, v in spec.env.items() if os.environ.get(k) != v}
        lines += [
            f"[program:{spec.name}]",
            "command=" + shlex.join(spec.argv).replace("%", "%%"),
            f"priority={_PRIORITY.get(spec.name, 20)}",
            "autostart=true", "autorestart=true", "startsecs=1", "startretries=100",
            "stopsignal=TERM", f"stopwaitsecs={STOP_WAIT_SECONDS}",
            # A service with several workers has them in process groups of their own: its supervisor stops
            # them on SIGTERM; a SIGKILL after STOP_WAIT_SECONDS goes to its whole group.
            "killasgroup=true",
            "redirect_stderr=true",
            *([f"stdout_logfile={spec.log}", "stdout_logfile_maxbytes=10MB", "stdout_logfile_backups=2"] if spec.log
              else ["stdout_logfile=/dev/stdout", "stdout_logfile_maxbytes=0"]),
        ]
        if changed:
            lines.append("environment=" + ",".join(f"{k}={_value(v)}" for k, v in sorted(changed.items())))
        lines.append("")
    path = run_dir / "supervisord.conf"
    path.write_text("\n".join(lines))
    return path


# prctl(2)'s option that makes a process the reaper of its orphaned descendants.
_PR_SET_CHILD_SUBREAPER = 36


def _adopt_orphans() -> None:
    """Run in supervisord's process before it executes: it becomes the reaper of its descendants' orphans (kept
    across execve). Patroni starts each postmaster detached from itself, so a postmaster killed with Patroni (or
    a backend whose postmaster was killed) is an orphan; handed to a pid 1 that reaps nobody (some containers' init)
    it would stay a zombie, whose pid still "exists" to the postmaster.pid checks of Patroni and of the next Postgres
    on that data directory, and the member would never start again. supervisord reaps every child it has, its own
    programs or not (its "reaped unknown pid"). No library offers this one call; ctypes makes it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def start(specs: list[ProcessSpec], run_dir: Path, **popen: Any) -> subprocess.Popen:
    """Starts supervisord (from this Python's environment) with `specs`, as the reaper of its descendants'
    orphans (_adopt_orphans); it runs until SIGTERM or SIGINT."""
    supervisord = Path(sys.executable).parent / "supervisord"
    return subprocess.Popen([str(supervisord), "-c", str(config(specs, run_dir))], preexec_fn=_adopt_orphans,
                            **popen)


def ctl(run_dir: Path, *args: str) -> str:
    """What `supervisorctl` answers for the supervisord of `run_dir`."""
    supervisorctl = Path(sys.executable).parent / "supervisorctl"
    return subprocess.run([str(supervisorctl), "-c", str(run_dir / "supervisord.conf"), *args],
                          capture_output=True, text=True, timeout=30).stdout


def stop(proc: subprocess.Popen, timeout: float = STOP_WAIT_SECONDS + 20) -> int:
    """Stops supervisord and, through it, every program; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
