"""The reasons table (shop_runtime.reasons) agrees with docs/api.md and is the only place a service pairs a reason
with its code."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from gateway import replies as gateway_replies
from shop_runtime.errors import invalid_argument, unavailable
from shop_runtime.reasons import INVENTORY_REASONS, REASONS, STATE_REASONS, refuse

ROOT = Path(__file__).resolve().parents[2]
API = (ROOT / "docs" / "api.md").read_text()
SERVICES = ("cart_svc", "catalog_svc", "inventory_svc", "order_svc")

# gRPC's mapping of status codes to HTTP (Envoy's transcoder answers with it).
HTTP = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ABORTED: 409, grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503}
# Reasons of docs/api.md that only the gateway (Envoy) makes.
GATEWAY_ONLY = gateway_replies.REASONS - REASONS.keys()
# Reasons no route of the REST API answers: the cart's answer to the order, and the identity check between services.
INTERNAL = {"CHECKOUT_NOT_FOUND", "CALLER_NOT_ALLOWED"}


def _section(title: str) -> str:
    return API.split(title, 1)[1].split("\n## ", 1)[0]


def _rows(section: str) -> list[tuple[str, list[str]]]:
    """(first cell, reasons of the second cell) of each row of the section's first table."""
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and (reasons := re.findall(r"`([A-Z_]+)`", cells[1])):
            rows.append((cells[0], reasons))
    return rows


PUBLIC_ROWS = _rows(_section("## Errors"))
INVENTORY_ROWS = _rows(_section("## Internal inventory API"))


def test_the_docs_tables_are_read():
    assert len(PUBLIC_ROWS) > 20 and len(INVENTORY_ROWS) >= 7


@pytest.mark.parametrize("status, reason", [(int(s), r) for s, rs in PUBLIC_ROWS for r in rs])
def test_every_reason_the_rest_api_lists_has_the_documented_status(status, reason):
    if reason in GATEWAY_ONLY:
        return
    assert reason in REASONS, f"{reason} is in docs/api.md but not in shop_runtime.reasons"
    assert HTTP[REASONS[reason]] == status


@pytest.mark.parametrize("code, reason", [(c, r) for c, rs in INVENTORY_ROWS for r in rs])
def test_inventorys_internal_reasons_have_the_documented_code(code, reason):
    assert INVENTORY_REASONS[reason] == grpc.StatusCode[code]


def test_every_reason_of_the_table_is_documented_or_internal():
    documented = {r for _, rs in PUBLIC_ROWS + INVENTORY_ROWS for r in rs}
    assert set(REASONS) - documented <= INTERNAL


def test_the_second_codes_are_the_same_http_status():
    for table in (INVENTORY_REASONS, STATE_REASONS):
        assert set(table) == set(REASONS)
        assert all(HTTP[table[r]] == HTTP[REASONS[r]] for r in REASONS)


def test_the_runtimes_own_refusals_agree_with_the_table():
    """shop_runtime's errors and mtls build their refusals with a code of their own: the table agrees with them."""
    for err in (invalid_argument("f", "bad"), unavailable("inventory")):
        assert err.code == REASONS[err.reason]
    pairs = [m for path in (ROOT / "shop_runtime").glob("*.py")
             for m in re.findall(r'ServiceError\(\s*grpc\.StatusCode\.([A-Z_]+),\s*"([A-Z_]+)"', path.read_text())]
    assert ("PERMISSION_DENIED", "CALLER_NOT_ALLOWED") in pairs
    assert all(REASONS[reason] == grpc.StatusCode[code] for code, reason in pairs), pairs


def test_a_refusal_takes_its_code_from_the_table():
    err = refuse("OUT_OF_STOCK", "none left", {"sku": "A", "available": 0})
    assert (err.code, err.reason, err.metadata) == (grpc.StatusCode.ABORTED, "OUT_OF_STOCK",
                                                    {"sku": "A", "available": "0"})
    with pytest.raises(KeyError):
        refuse("NO_SUCH_REASON", "x")


def test_no_service_pairs_a_reason_with_a_code_of_its_own():
    """A service raises by reason (refuse); a ServiceError built with a status code of its own could drift."""
    found = []
    for service in SERVICES:
        for path in (ROOT / service).glob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"ServiceError\(\s*grpc\.StatusCode", line):
                    found.append(f"{path.relative_to(ROOT)}:{n}")
    assert found == []
