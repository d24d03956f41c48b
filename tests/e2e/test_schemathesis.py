"""Schemathesis against the OpenAPI document, through the gateway: no 5xx, no invalid input accepted."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKS = "not_a_server_error,negative_data_rejection,response_schema_conformance,status_code_conformance"
SEED = "20261212"


def test_schemathesis_finds_no_5xx_and_no_accepted_invalid_input(suite):
    st = Path(sys.executable).parent / "st"
    token = suite.token("fuzzer", "admin")  # an admin token reaches every route
    run = subprocess.run(
        [str(st), "run", str(ROOT / "docs" / "openapi.json"), "--url", suite.base_url,
         "-H", f"Authorization: Bearer {token}", "--checks", CHECKS, "--max-examples", "50", "--seed", SEED,
         "--no-color"],
        capture_output=True, text=True, timeout=600,
    )
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    cases = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert cases and cases.group(1) == cases.group(2), summary
    print(f"schemathesis: {cases.group(1)} cases, all passed (checks {CHECKS}, seed {SEED})")
