"""The Postman collections of docs/ run green with newman against the suite: a full purchase, and a merchant's flash
sale (a product created, a campaign scheduled, a purchase at the sale price when it opens, the report)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEWMAN = ROOT / ".tools" / "node" / "node_modules" / ".bin" / "newman"


@pytest.mark.parametrize("collection, assertions", [("postman_collection.json", 15), ("postman_flash_sale.json", 13)])
def test_the_postman_collection_runs_green(suite, collection, assertions):
    assert NEWMAN.exists(), "newman is installed by `make test` (npm); run `make setup test` or `make newman`"
    run = subprocess.run(
        [str(NEWMAN), "run", str(ROOT / "docs" / collection), "--color", "off",
         "--env-var", f"baseUrl={suite.base_url}",
         "--env-var", f"token={suite.token('newman-shopper')}",
         "--env-var", f"adminToken={suite.token('newman-admin', 'admin')}"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:]
    # newman's summary row: │ assertions │ executed │ failed │
    executed, failed = map(int, re.search(r"assertions\s*│\s*(\d+)\s*│\s*(\d+)", run.stdout).groups())
    assert executed >= assertions and failed == 0, run.stdout[-4000:]
    print(f"newman {collection}: {executed} assertions, {failed} failed")
