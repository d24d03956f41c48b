"""The protos against the REST contract and the style guide, read from the built descriptor set."""

from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway.envoy import GatewayConfig, bootstrap
from gateway.routes import LARGE_BODY_ROUTES

DESCRIPTOR = Path(__file__).resolve().parents[2] / "gen" / "shop.pb"

# Every route of the REST contract (API.md), with path variables as the protos name them.
CONTRACT_ROUTES = {
    ("get", "/catalogs"),
    ("get", "/catalogs/{sku}"),
    ("post", "/chart"),
    ("put", "/chart/{sku}/{qty}"),
    ("get", "/chart"),
    ("post", "/checkout"),
    ("post", "/payment"),
    ("get", "/orders/{order_id}"),
    ("get", "/orders"),
    ("put", "/admin/stock/{sku}"),
    ("get", "/admin/stock/{sku}"),
    ("post", "/admin/stock/{sku}/adjustments"),
    ("post", "/admin/campaigns"),
    ("post", "/admin/campaigns/{campaign_id}:cancel"),
    ("get", "/admin/campaigns/{campaign_id}"),
    ("get", "/admin/campaigns"),
    ("get", "/campaigns"),
    ("get", "/campaigns/{campaign_id}"),
    ("post", "/admin/products"),
    ("patch", "/admin/products/{sku}"),
    ("post", "/admin/products:batchUpsert"),
    ("get", "/admin/products/{sku}/changes"),
}


@pytest.fixture(scope="module")
def shop_files():
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())
    return [f for f in files.file if f.package.startswith("shop.")]


def test_every_contract_route_is_annotated_and_nothing_else(shop_files):
    routes = set()
    for f in shop_files:
        for service in f.service:
            for method in service.method:
                if method.options.HasExtension(annotations_pb2.http):
                    rule = method.options.Extensions[annotations_pb2.http]
                    verb = rule.WhichOneof("pattern")
                    routes.add((verb, getattr(rule, verb)))
    assert routes == CONTRACT_ROUTES


def test_packages_are_versioned_and_match_their_directory(shop_files):
    assert {f.package for f in shop_files} == {
        "shop.catalog.v1", "shop.cart.v1", "shop.inventory.v1", "shop.order.v1"}
    for f in shop_files:
        assert f.name == f.package.replace(".", "/") + "/" + f.name.rsplit("/", 1)[1]


def test_enum_zero_values_are_unspecified(shop_files):
    for f in shop_files:
        for enum in f.enum_type:
            assert enum.value[0].number == 0 and enum.value[0].name.endswith("_UNSPECIFIED")


def _commented_paths(f: descriptor_pb2.FileDescriptorProto) -> set[tuple[int, ...]]:
    return {tuple(loc.path) for loc in f.source_code_info.location if loc.leading_comments.strip()}


def test_every_service_rpc_message_field_and_enum_value_has_a_comment(shop_files):
    # Paths per descriptor.proto: message_type=4 (field=2), enum_type=5 (value=2), service=6 (method=2).
    missing = []
    for f in shop_files:
        commented = _commented_paths(f)
        for i, msg in enumerate(f.message_type):
            if (4, i) not in commented:
                missing.append(f"{f.name}: message {msg.name}")
            missing += [f"{f.name}: field {msg.name}.{fld.name}"
                        for j, fld in enumerate(msg.field) if (4, i, 2, j) not in commented]
        for i, enum in enumerate(f.enum_type):
            if (5, i) not in commented:
                missing.append(f"{f.name}: enum {enum.name}")
            missing += [f"{f.name}: enum value {v.name}" for j, v in enumerate(enum.value) if (5, i, 2, j) not in commented]
        for i, svc in enumerate(f.service):
            if (6, i) not in commented:
                missing.append(f"{f.name}: service {svc.name}")
            missing += [f"{f.name}: rpc {svc.name}.{m.name}"
                        for j, m in enumerate(svc.method) if (6, i, 2, j) not in commented]
    assert missing == []


def test_gateway_routes_only_annotated_rpcs(tmp_path):
    cfg = GatewayConfig("127.0.0.1", 9000, 9901, DESCRIPTOR, tmp_path, tmp_path / "jwks.json")
    hcm = bootstrap(cfg)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    every = {r["match"]["path"] for r in hcm["route_config"]["virtual_hosts"][0]["routes"]}
    # Besides the RPCs' routes, only those giving a REST route's body its own limit (gateway.routes).
    assert every - {p for p in every if p.startswith("/shop.")} == {path for _, path in LARGE_BODY_ROUTES}
    paths = {p for p in every if p.startswith("/shop.")}
    assert "/shop.catalog.v1.CatalogService/ListProducts" in paths
    assert "/shop.inventory.v1.InventoryService/SetStock" in paths
    # internal RPCs stay unreachable from outside
    assert "/shop.inventory.v1.InventoryService/GetAvailability" not in paths
    assert "/shop.catalog.v1.CatalogService/BatchGetProducts" not in paths
    assert len(paths) == len(CONTRACT_ROUTES)
