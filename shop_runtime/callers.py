"""Who a call's caller is, whose word about the end user is taken, and which caller may call which RPC."""

from __future__ import annotations

import contextvars

import grpc

from shop_runtime.errors import ServiceError

# Identity: a caller is the common name of its certificate (shop_runtime.mtls). The user a call is made for
# (x-shop-user-id) is believed only from the gateway, which sets it from a verified token, and from the suite's
# services, which pass on what the gateway set; from any other certificate of the suite (`ops`, an operator's tool)
# the header is ignored.
#
# Each RPC of the suite is open only to the identities that have a reason to call it (CALLERS): the gateway the RPCs
# it serves as REST routes, each service the RPCs it calls, and `ops` every one. A certificate of the suite that
# calls another RPC is refused with PERMISSION_DENIED: a catalog cannot commit holds, nor the gateway set stock
# other than through its admin route.

# The identities whose word about the end user is taken: the gateway, and the services that pass it on.
USER_ASSERTERS = frozenset({"gateway", "catalog", "cart", "inventory", "order"})
# An operator's tools (and the benchmarks): may call every RPC; their word about the user is not taken.
OPERATOR = "ops"


def _rpcs(service: str, callers: dict[str, set[str]]) -> dict[str, frozenset[str]]:
    return {f"/{service}/{rpc}": frozenset(who) for rpc, who in callers.items()}


# Who may call each RPC of the suite's services besides OPERATOR. The gateway calls the RPCs with an HTTP
# annotation (the REST routes), the services what their clients (`<service>_svc/client.py`) send. An RPC of the
# suite missing here is refused to all but OPERATOR; tests/unit/test_callers.py holds this table to the protos.
CALLERS: dict[str, frozenset[str]] = {
    **_rpcs("shop.catalog.v1.CatalogService", {
        "ListProducts": {"gateway"}, "GetProduct": {"gateway"},
        "BatchGetProducts": {"cart"}, "RecordSales": {"order"}}),
    **_rpcs("shop.catalog.v1.CampaignService", {
        "CreateCampaign": {"gateway"}, "CancelCampaign": {"gateway"}, "GetCampaign": {"gateway"},
        "ListCampaigns": {"gateway"}, "ListPublicCampaigns": {"gateway"}, "GetPublicCampaign": {"gateway"}}),
    **_rpcs("shop.catalog.v1.CatalogAdminService", {
        "CreateProduct": {"gateway"}, "UpdateProduct": {"gateway"}, "BatchUpsertProducts": {"gateway"},
        "ListProductChanges": {"gateway"}}),
    **_rpcs("shop.cart.v1.CartService", {
        "AddItem": {"gateway"}, "SetItemQuantity": {"gateway"}, "GetCart": {"gateway"},
        "CheckoutCart": {"order"}}),
    **_rpcs("shop.inventory.v1.InventoryService", {
        "CreateHolds": {"cart"}, "ResizeHold": {"cart"}, "ChangeHolds": {"cart"},
        "ReleaseHolds": {"cart", "order"}, "ExtendHolds": {"cart", "order"},
        "GetHolds": {"cart", "order"}, "ListHolds": {"cart", "order"},
        "CommitHolds": {"order"}, "GetAvailability": {"catalog"},
        "SetStock": {"gateway"}, "GetStock": {"gateway"}, "AdjustStock": {"gateway"},
        "CreateCampaign": {"catalog"}, "CancelCampaign": {"catalog"}, "GetCampaigns": {"catalog"},
        "ListCampaigns": {"catalog"}}),
    **_rpcs("shop.order.v1.OrderService", {
        "Checkout": {"gateway"}, "Pay": {"gateway"}, "GetOrder": {"gateway"}, "ListOrders": {"gateway"}}),
}
# The RPCs CALLERS governs; others (gRPC health, reflection) are open to every certificate of the suite.
SUITE_RPC_PREFIX = "/shop."

# The caller of the call being served: (the call's context, whether it came in plaintext, its certificate's name).
_CALLER: contextvars.ContextVar[tuple[object, bool, str | None] | None] = contextvars.ContextVar(
    "shop_caller", default=None)


def _caller(context: grpc.aio.ServicerContext) -> tuple[bool, str | None]:
    """Whether the call came in plaintext, and the common name of its caller's certificate. The call's auth context
    is read once per call and kept for the rest of it: gRPC builds it anew for each read, copying the caller's whole
    certificate, and a call asks who its caller is up to three times (refusal, the user header, the actor)."""
    kept = _CALLER.get()
    if kept is not None and kept[0] is context:
        return kept[1], kept[2]
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name")
    plaintext, identity = auth.get("transport_security_type") == [b"insecure"], next(iter(names)).decode() if names else None
    _CALLER.set((context, plaintext, identity))
    return plaintext, identity


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The common name of the caller's certificate; None on a plaintext server."""
    return _caller(context)[1]


def believes_user_from(context: grpc.aio.ServicerContext) -> bool:
    """Whether the user header of this call is to be believed: always on a plaintext server (no identities to
    tell apart), else only from USER_ASSERTERS."""
    plaintext, identity = _caller(context)
    return plaintext or identity in USER_ASSERTERS


def refusal(context: grpc.aio.ServicerContext, method: str) -> ServiceError | None:
    """Why this call of `method` (a full method name) is refused, if it is: its caller's certificate is not one of
    CALLERS[method] nor OPERATOR. A plaintext server refuses nothing (it has no identities to tell apart)."""
    if not method.startswith(SUITE_RPC_PREFIX):
        return None
    plaintext, caller = _caller(context)
    if plaintext or caller == OPERATOR or caller in CALLERS.get(method, ()):
        return None
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED",
                        f"{caller} may not call {method.rsplit('/', 1)[-1]}", {"caller": str(caller)})
