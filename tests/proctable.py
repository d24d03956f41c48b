"""The machine's processes as the tests look at them, read from /proc (state, parent, children, whether alive), and
signalled."""

from __future__ import annotations

import os
import signal


def state(pid: int) -> tuple[str, int] | None:
    """A process's state letter (Z: a zombie, dead with its exit status not yet collected) and parent pid; None
    once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether `pid` is a running process: not gone, and not a zombie."""
    found = state(pid)
    return found is not None and found[0] != "Z"


def children(pid: int) -> set[int]:
    """The pids of the processes whose parent is `pid`."""
    return {int(entry) for entry in filter(str.isdigit, os.listdir("/proc")) if (state(int(entry)) or ("", 0))[1] == pid}


def descendants(pid: int) -> set[int]:
    """The pids of `pid`'s children, their children, and so on."""
    found: set[int] = set()
    parents = {pid}
    while parents:
        below = set().union(*(children(p) for p in parents)) - found
        found |= below
        parents = below
    return found


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    """Sends `sig` to each of `pids`, skipping those already gone."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
