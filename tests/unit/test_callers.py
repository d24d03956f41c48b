"""Who may call what (shop_runtime.callers.CALLERS): the table covers every RPC of the protos, the gateway may call
exactly the RPCs it serves as REST routes, and a call from any other certificate is refused before its handler."""

import grpc
import pytest
from google.api import annotations_pb2
from shop.cart.v1 import cart_pb2
from shop.catalog.v1 import campaigns_pb2, catalog_admin_pb2, catalog_pb2
from shop.inventory.v1 import inventory_pb2
from shop.order.v1 import order_pb2

from devstack.certs import IDENTITIES
from shop_runtime import callers

SERVICES = [m.DESCRIPTOR.services_by_name[name] for m, name in (
    (catalog_pb2, "CatalogService"), (campaigns_pb2, "CampaignService"), (catalog_admin_pb2, "CatalogAdminService"), (cart_pb2, "CartService"), (inventory_pb2, "InventoryService"),
    (order_pb2, "OrderService"))]
RPCS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}


def routed(method) -> bool:
    """Whether the RPC has an HTTP annotation, i.e. Envoy serves it as a REST route."""
    return method.GetOptions().HasExtension(annotations_pb2.http)


def test_every_rpc_of_the_protos_has_its_callers_and_no_other_is_named():
    assert set(callers.CALLERS) == set(RPCS)
    assert all(name.startswith(callers.SUITE_RPC_PREFIX) for name in RPCS)


def test_the_gateway_may_call_exactly_the_rest_routes():
    assert {n for n, who in callers.CALLERS.items() if "gateway" in who} == {n for n, m in RPCS.items() if routed(m)}


def test_callers_are_identities_of_the_suite_and_only_services_call_what_has_no_route():
    named = set().union(*callers.CALLERS.values())
    assert named <= set(IDENTITIES) - {"consul", callers.OPERATOR}
    for name, who in callers.CALLERS.items():
        assert who, name
        if not routed(RPCS[name]):
            assert who <= {"catalog", "cart", "inventory", "order"}, name


class Context:
    """The part of a server context `refusal` reads: the transport and the caller's certificate name."""

    def __init__(self, caller: str | None):
        self.caller = caller
        self.reads = 0

    def auth_context(self):
        self.reads += 1
        if self.caller is None:
            return {"transport_security_type": [b"insecure"]}
        return {"transport_security_type": [b"ssl"], "x509_common_name": [self.caller.encode()]}


COMMIT = "/shop.inventory.v1.InventoryService/CommitHolds"
SET_STOCK = "/shop.inventory.v1.InventoryService/SetStock"


@pytest.mark.parametrize("caller, method", [
    ("order", COMMIT), ("ops", COMMIT), ("ops", SET_STOCK), ("gateway", SET_STOCK),
    ("catalog", "/grpc.health.v1.Health/Check"), (None, COMMIT)])
def test_allowed(caller, method):
    assert callers.refusal(Context(caller), method) is None


@pytest.mark.parametrize("caller, method", [
    ("catalog", COMMIT), ("gateway", COMMIT), ("cart", COMMIT), ("order", SET_STOCK), ("consul", SET_STOCK),
    ("inventory", "/shop.order.v1.OrderService/Pay"), ("order", "/shop.inventory.v1.InventoryService/NewRpc")])
def test_refused(caller, method):
    refused = callers.refusal(Context(caller), method)
    assert refused is not None
    assert (refused.code, refused.reason, refused.metadata) == (
        grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED", {"caller": caller})


def test_a_call_reads_its_auth_context_once_however_often_it_asks_who_called():
    first, second = Context("order"), Context("ops")
    assert callers.refusal(first, COMMIT) is None
    assert callers.believes_user_from(first) and callers.peer_identity(first) == "order"
    assert first.reads == 1
    assert callers.peer_identity(second) == "ops" and not callers.believes_user_from(second)
    assert (first.reads, second.reads) == (1, 1)
