"""The gateway's limits as rendered into Envoy's bootstrap: per-user buckets on the four state-changing routes only,
settings and their defaults, circuit breakers and the replies past them."""

import re
from pathlib import Path

import pytest

from devstack.stack import DESCRIPTOR
from gateway.auth import USER_HEADER
from gateway.envoy import GatewayConfig, bootstrap
from gateway.limits import RATE_LIMITED_ROUTES, GatewayLimits, limited_methods
from gateway.routes import exposed_methods
from gateway.openapi import build
from shop_runtime.config import ConfigError

# A REST path per route template, as a storefront would send it.
SAMPLE_PATHS = {
    "/catalogs": "/catalogs?page=2", "/catalogs/{sku}": "/catalogs/EL-0001", "/chart": "/chart",
    "/chart/{sku}/{qty}": "/chart/EL-0001/3", "/checkout": "/checkout", "/payment": "/payment",
    "/orders": "/orders", "/orders/{order_id}": "/orders/0b6c", "/admin/stock/{sku}": "/admin/stock/EL-0001",
    "/admin/stock/{sku}/adjustments": "/admin/stock/EL-0001/adjustments", "/admin/products": "/admin/products",
    "/admin/products/{sku}": "/admin/products/EL-0001", "/admin/products:batchUpsert": "/admin/products:batchUpsert",
    "/admin/products/{sku}/changes": "/admin/products/EL-0001/changes",
    "/admin/campaigns": "/admin/campaigns", "/admin/campaigns/{campaign_id}": "/admin/campaigns/0b6c",
    "/admin/campaigns/{campaign_id}:cancel": "/admin/campaigns/0b6c:cancel", "/campaigns": "/campaigns",
    "/campaigns/{campaign_id}": "/campaigns/0b6c",
}


def config(tmp_path: Path, limits: GatewayLimits | None = None) -> dict:
    cfg = GatewayConfig("127.0.0.1", 9000, 9901, DESCRIPTOR, tmp_path, tmp_path / "jwks.json",
                        *([limits] if limits else []))
    return bootstrap(cfg)


def hcm(boot: dict) -> dict:
    return boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def rate_limit_filter(boot: dict) -> dict | None:
    found = [f["typed_config"] for f in hcm(boot)["http_filters"] if f["name"] == "envoy.filters.http.local_ratelimit"]
    return found[0] if found else None


def _header_matches(matcher: dict, headers: dict[str, str]) -> bool:
    value = headers.get(matcher["name"])
    match = matcher["string_match"]
    if value is None:
        return False
    if "exact" in match:
        return value == match["exact"]
    # Envoy's safe_regex must match the whole value; RE2 and Python agree on these simple patterns.
    return re.fullmatch(match["safe_regex"]["regex"], value) is not None


def descriptors(filter_config: dict, method: str, path: str, user: str = "alice") -> list[list[tuple[str, str]]]:
    """The descriptors the filter's rate_limits make of a request, evaluated as Envoy does: an action
    list yields a descriptor only when every action yields an entry."""
    headers = {":method": method, ":path": path, USER_HEADER: user}
    made = []
    for rule in filter_config["rate_limits"]:
        entries = []
        for action in rule["actions"]:
            if "header_value_match" in action:
                hvm = action["header_value_match"]
                if not all(_header_matches(m, headers) for m in hvm["headers"]):
                    break
                entries.append((hvm["descriptor_key"], hvm["descriptor_value"]))
            else:
                rh = action["request_headers"]
                if rh["header_name"] not in headers:
                    break
                entries.append((rh["descriptor_key"], headers[rh["header_name"]]))
        else:
            made.append(entries)
    return made


def test_the_defaults_let_a_person_click_as_fast_as_they_can(tmp_path):
    limits = GatewayLimits.from_env({})
    assert limits == GatewayLimits()
    # API.md: at least 5 requests per second per user, with bursts of 20.
    assert limits.rate_per_second >= 5 and limits.burst >= 20
    bucket = rate_limit_filter(config(tmp_path))["descriptors"][0]["token_bucket"]
    assert bucket == {"max_tokens": limits.burst, "tokens_per_fill": limits.rate_per_second, "fill_interval": "1s"}


def test_the_limits_come_from_the_settings(tmp_path):
    limits = GatewayLimits.from_env({"GATEWAY_RATE_LIMIT_PER_SECOND": "7", "GATEWAY_RATE_LIMIT_BURST": "25",
                                     "GATEWAY_RATE_LIMIT_USERS": "500", "GATEWAY_MAX_REQUESTS_PER_SERVICE": "3000"})
    boot = config(tmp_path, limits)
    rl = rate_limit_filter(boot)
    assert rl["descriptors"][0]["token_bucket"] == {"max_tokens": 25, "tokens_per_fill": 7, "fill_interval": "1s"}
    # One bucket per user: the user entry's value is empty (Envoy's dynamic descriptor), kept for 500 users.
    assert rl["descriptors"][0]["entries"][1] == {"key": "user"}
    assert rl["max_dynamic_descriptors"] == 500
    assert rl["response_headers_to_add"][0]["header"] == {"key": "retry-after", "value": "1"}
    for cluster in boot["static_resources"]["clusters"]:
        (thresholds,) = cluster["circuit_breakers"]["thresholds"]
        assert thresholds["max_requests"] == thresholds["max_pending_requests"] == 3000


def test_the_render_command_reads_the_environment_by_default(monkeypatch):
    monkeypatch.setenv("GATEWAY_RATE_LIMIT_PER_SECOND", "12")
    monkeypatch.delenv("GATEWAY_RATE_LIMIT_BURST", raising=False)
    assert GatewayLimits.from_env() == GatewayLimits(rate_per_second=12)


@pytest.mark.parametrize("name,value", [
    ("GATEWAY_RATE_LIMIT_PER_SECOND", "-1"), ("GATEWAY_RATE_LIMIT_PER_SECOND", "ten"),
    ("GATEWAY_RATE_LIMIT_BURST", "0"), ("GATEWAY_RATE_LIMIT_USERS", "0"), ("GATEWAY_MAX_REQUESTS_PER_SERVICE", "0"),
])
def test_a_bad_setting_is_a_loud_error_naming_it(name, value):
    with pytest.raises(ConfigError, match=name):
        GatewayLimits.from_env({name: value})


def test_a_rate_of_zero_turns_the_per_user_limit_off(tmp_path):
    assert rate_limit_filter(config(tmp_path, GatewayLimits(rate_per_second=0))) is None


def test_only_the_four_state_changing_routes_are_limited_in_rest_and_grpc_form(tmp_path):
    rl = rate_limit_filter(config(tmp_path))
    methods = exposed_methods(DESCRIPTOR)
    limited = set()
    for m in methods:
        path = SAMPLE_PATHS[m.rest_path]
        rest = descriptors(rl, m.verb.upper(), path)
        grpc = descriptors(rl, "POST", m.grpc_path)
        if (m.verb, m.rest_path) in RATE_LIMITED_ROUTES:
            # Exactly one descriptor, so a request takes exactly one token, from its user's bucket.
            assert rest == grpc == [[("limited", "state-change"), ("user", "alice")]], m
            limited.add((m.verb, m.rest_path))
        else:
            assert rest == grpc == [], m
    assert limited == RATE_LIMITED_ROUTES
    # The reads of the same paths pass, and so do other users' requests, each on their own bucket.
    assert descriptors(rl, "GET", "/chart") == []
    assert descriptors(rl, "POST", "/chart", user="bob") == [[("limited", "state-change"), ("user", "bob")]]


@pytest.mark.parametrize("method,path,limited", [
    # What the transcoder routes to a limited RPC (Envoy has already merged slashes and resolved dot segments).
    ("POST", "/chart/", True), ("POST", "/chart?x=1", True), ("POST", "/chart/?", True),
    ("PUT", "/chart/EL-0001/3/", True), ("PUT", "/chart/EL-0001/3?a=b", True), ("POST", "/checkout/", True),
    ("PUT", "/chart/EL%2F0001/3", True),
    # What it does not.
    ("POST", "/chartx", False), ("POST", "/chart/EL-0001", False), ("PUT", "/chart/EL-0001", False),
    ("PUT", "/chart/EL-0001/3/4", False), ("GET", "/checkout", False), ("POST", "/paymentx", False),
])
def test_path_variants_the_transcoder_accepts_are_limited_too(tmp_path, method, path, limited):
    assert bool(descriptors(rate_limit_filter(config(tmp_path)), method, path)) is limited


def test_the_limiter_sees_the_verified_user_and_the_rest_path(tmp_path):
    names = [f["name"] for f in hcm(config(tmp_path))["http_filters"]]
    at = names.index("envoy.filters.http.local_ratelimit")
    # After the token check (which sets the user header from `sub`), before the transcoder rewrites the path.
    assert names.index("envoy.filters.http.jwt_authn") < at < names.index("envoy.filters.http.grpc_json_transcoder")
    assert names.index("envoy.filters.http.header_mutation") < at


def test_a_route_missing_from_the_protos_fails_the_render_instead_of_going_unlimited():
    methods = [m for m in exposed_methods(DESCRIPTOR) if m.rest_path != "/checkout"]
    with pytest.raises(ValueError, match="/checkout"):
        limited_methods(methods)


def test_past_a_limit_the_gateway_answers_429_rate_limited_not_503(tmp_path):
    mappers = hcm(config(tmp_path))["local_reply_config"]["mappers"]

    def first_match(status: int, flags: set[str]) -> dict:
        for m in mappers:
            f = m["filter"]
            if "response_flag_filter" in f and set(f["response_flag_filter"]["flags"]) & flags:
                return m
            if "status_code_filter" in f and f["status_code_filter"]["comparison"]["value"]["default_value"] == status:
                return m
        raise AssertionError(f"no mapper for {status} {flags}")

    per_user = first_match(429, {"RL"})
    overflow = first_match(503, {"UO"})
    no_upstream = first_match(503, {"UH"})
    for mapper, scope in ((per_user, "user"), (overflow, "gateway")):
        body = mapper["body_format_override"]["json_format"]
        assert body["code"] == 8
        assert body["details"] == [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMITED",
                                    "domain": "gateway", "metadata": {"scope": scope}}]
    assert overflow["status_code"] == 429
    assert overflow["headers_to_add"][0]["header"] == {"key": "retry-after", "value": "1"}
    # No instance at all is still a 503: that is an outage, not a crowd.
    assert no_upstream["body_format_override"]["json_format"]["details"][0]["reason"] == "UPSTREAM_UNAVAILABLE"


def test_circuit_breakers_hold_a_flash_sale_crowd(tmp_path):
    for cluster in config(tmp_path)["static_resources"]["clusters"]:
        (thresholds,) = cluster["circuit_breakers"]["thresholds"]
        # Envoy's default of 1,024 turned 2,000 concurrent readers into 503s.
        assert min(thresholds["max_requests"], thresholds["max_pending_requests"],
                   thresholds["max_connections"]) >= 5000
        # Only a replica that stops answering is ejected, not one that answered a 5xx of its own.
        od = cluster["outlier_detection"]
        assert od["enforcing_consecutive_5xx"] == 0 and od["split_external_local_origin_errors"]


def test_the_openapi_document_names_the_429s():
    doc = build(DESCRIPTOR)
    for path, item in doc["paths"].items():
        for verb, op in item.items():
            answer = op["responses"]["429"]
            assert "Retry-After" in answer["headers"]
            template = re.sub(r"\{(\w+)\}", lambda g: "{" + re.sub(r"[A-Z]", lambda c: "_" + c.group().lower(),
                                                                      g.group(1)) + "}", path)
            assert ("scope `user`" in answer["description"]) == ((verb, template) in RATE_LIMITED_ROUTES), path
