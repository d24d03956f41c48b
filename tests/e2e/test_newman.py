"""The Postman collection of docs/ runs green with newman against the suite."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEWMAN = ROOT / ".tools" / "node" / "node_modules" / ".bin" / "newman"


def test_the_postman_collection_runs_green(suite):
    assert NEWMAN.exists(), "newman is installed by `make test` (npm); run `make setup test` or `make newman`"
    run = subprocess.run(
        [str(NEWMAN), "run", str(ROOT / "docs" / "postman_collection.json"), "--color", "off",
         "--env-var", f"baseUrl={suite.base_url}",
         "--env-var", f"token={suite.token('newman-shopper')}",
         "--env-var", f"adminToken={suite.token('newman-admin', 'admin')}"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:]
    # newman's summary row: │ assertions │ executed │ failed │
    executed, failed = map(int, re.search(r"assertions\s*│\s*(\d+)\s*│\s*(\d+)", run.stdout).groups())
    assert executed >= 15 and failed == 0, run.stdout[-4000:]
    print(f"newman: {executed} assertions, {failed} failed")
