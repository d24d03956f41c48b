"""Runs wrk with bench/rest.lua against the gateway and reads back its rate, latencies and status counts."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

SCRIPT = Path(__file__).with_name("rest.lua")
_MARK = "BENCH-RESULT "


@dataclass(frozen=True)
class RestRun:
    """What one wrk run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    # Socket errors and timeouts (wrk's own count): answers that never came.
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Answers per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_binary() -> str:
    """The wrk on PATH (`make bench` installs Debian's package when it is missing)."""
    found = shutil.which("wrk")
    if not found:
        raise FileNotFoundError("no wrk on PATH: `make bench-tools` installs Debian's wrk package")
    return found


def run(base_url: str, paths: list[str], *, connections: int, seconds: float, threads: int, work_dir: Path,
        method: str = "GET", tokens: list[str] | None = None, body: str = "") -> RestRun:
    """`connections` connections for `seconds`, rotating over `paths` and `tokens` (one user's bearer token each)."""
    paths_file = work_dir / "wrk-paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    tokens_file = "-"
    if tokens:
        tokens_file = str(work_dir / "wrk-tokens.txt")
        Path(tokens_file).write_text("\n".join(tokens) + "\n")
    argv = [wrk_binary(), "--threads", str(threads), "--connections", str(connections),
            "--duration", f"{max(1, round(seconds))}s",
            # Slow answers are measured, not dropped as wrk's default 2 s timeout would.
            "--timeout", "30s", "--script", str(SCRIPT), base_url + paths[0],
            "--", method, str(paths_file), tokens_file, body]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result line:\n{done.stdout}\n{done.stderr}")
    result = json.loads(line[len(_MARK):])
    _LOGGER.debug("wrk: %s", line)
    return RestRun(requests=result["requests"], seconds=result["duration_us"] / 1e6,
                   p50_ms=result["p50_us"] / 1000, p99_ms=result["p99_us"] / 1000,
                   statuses=dict(sorted(result["statuses"].items())),
                   errors={k: v for k, v in result["errors"].items() if v})
