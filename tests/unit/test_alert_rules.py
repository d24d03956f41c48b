"""The rules of monitoring/rules: valid for promtool, proven by the promtool unit tests of monitoring/tests, and each
alert with a severity, a summary, a runbook and a test in which it fires and one in which it does not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from devstack.prometheus import RULES_DIR, promtool_binary
from devstack.stack import DESCRIPTOR, ROOT
from gateway.routes import exposed_methods

TESTS_DIR = ROOT / "monitoring" / "tests"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*.yml"))
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str) -> None:
    """Runs promtool; a failure fails the test with promtool's own output."""
    done = subprocess.run([promtool_binary(), *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)


def rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def test_there_are_rules_and_tests():
    assert RULE_FILES and TEST_FILES
    assert alerts()


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_are_valid(path: Path):
    promtool("check", "rules", str(path))


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path: Path):
    promtool("test", "rules", str(path))


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_has_a_severity_a_summary_and_a_runbook(name: str):
    rule = alerts()[name]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, rule
    annotations = rule.get("annotations", {})
    assert annotations.get("summary", "").strip(), rule
    # One paragraph: what it means, what to look at, what to do.
    runbook = annotations.get("runbook", "").strip()
    assert len(runbook) > 200 and "\n\n" not in runbook, rule


def test_every_alert_fires_in_a_test_and_stays_quiet_in_another():
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text()).get("tests", []):
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts())
    assert names - fired == set(), "alerts that no test sees firing"
    assert names - quiet == set(), "alerts that no test sees quiet"


def test_every_rest_route_is_named_by_its_rpc():
    # shop:route_info gives every RPC the gateway transcodes its REST route (the label the route alerts carry).
    recorded = {(r["labels"]["method"], r["labels"]["route"]) for r in rules() if r.get("record") == "shop:route_info"}
    routes = {(m.grpc_path, f"{m.verb.upper()} {m.rest_path}") for m in exposed_methods(DESCRIPTOR)}
    assert recorded == routes
