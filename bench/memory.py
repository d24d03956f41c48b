"""Peak resident memory (VmHWM) of the suite's processes and their children, read from /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Read straight from /proc: psutil, the usual library for process figures, has no VmHWM (the kernel's
# high-water mark of resident memory) on Linux, only the current RSS, which would miss a peak between samples.


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone, or not ours to read
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def peak_kib(pid: int) -> int:
    """The process's VmHWM in KiB; 0 when it is gone."""
    value = _status(pid).get("VmHWM", "0 kB").split()
    return int(value[0]) if value else 0


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process now running."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _status(int(entry)).get("PPid", "").strip()
            if ppid.isdigit():
                tree.setdefault(int(ppid), []).append(int(entry))
    return tree


def descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    """Every process below `pid` in `tree`."""
    found, todo = [], list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


@dataclass
class Peak:
    """The largest figures seen for one process of the suite over all samples."""

    own_kib: int = 0
    # The process and all its descendants together (worker processes, Postgres backends), the most at one sample.
    # Memory the processes share (Postgres' shared buffers, pages of a forked parent) counts once per process.
    tree_kib: int = 0
    processes: int = 1
    # The largest single process below it (one worker, one Postgres backend).
    largest_child_kib: int = 0


class PeakMemory:
    """Samples the named processes' trees now and then; keeps each one's largest figures."""

    def __init__(self) -> None:
        self.roots: dict[str, int] = {}
        self.peaks: dict[str, Peak] = {}

    def watch(self, name: str, pid: int) -> None:
        """Adds a process (and its future children) to the samples."""
        self.roots[name] = pid
        self.peaks.setdefault(name, Peak())

    def sample(self) -> None:
        """Reads every watched tree once. VmHWM is itself a peak, so this misses only processes that ended."""
        tree = _children()
        for name, pid in self.roots.items():
            peak = self.peaks[name]
            pids = [pid, *descendants(pid, tree)]
            figures = [peak_kib(p) for p in pids]
            peak.own_kib = max(peak.own_kib, figures[0])
            peak.largest_child_kib = max(peak.largest_child_kib, *figures[1:], 0)
            if sum(figures) > peak.tree_kib:
                peak.tree_kib, peak.processes = sum(figures), len(pids)
