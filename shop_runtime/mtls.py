"""Mutual TLS between the suite's processes: who may call a service, and whom a service believes about the user.

With TLS_DIR set (shop_runtime.config), a service listens only for TLS callers that present a certificate signed by
the suite's CA (devstack.certs makes it), and calls the other services over TLS with its own certificate, checking
that the callee's certificate names the service it meant to call (`<service>.shop.internal`), whatever address
Consul gave. Without TLS_DIR it serves and calls in plaintext and says so at start: for tests of one service and
for a network that is private by other means.

Identity: a caller is the common name of its certificate. The user a call is made for (x-shop-user-id) is
believed only from the gateway, which sets it from a verified token, and from the suite's services, which pass on
what the gateway set; from any other certificate of the suite (`ops`, an operator's tool) the header is ignored.

Each RPC of the suite is open only to the identities that have a reason to call it (CALLERS): the gateway the RPCs
it serves as REST routes, each service the RPCs it calls, and `ops` every one. A certificate of the suite that
calls another RPC is refused with PERMISSION_DENIED: a catalog cannot commit holds, nor the gateway set stock
other than through its admin route.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from pathlib import Path

import grpc

from shop_runtime.errors import ServiceError

CA_FILE = "ca.pem"
DOMAIN = "shop.internal"
# The name Consul's health checks ask for (its agents' `server_name`), which every certificate of the suite carries
# besides its own: Consul 1.8 sends one name for every check, and a server asked for a name its certificate lacks
# logs an error for every check. Callers other than Consul check the service's own name.
CHECK_SERVER_NAME = f"health.{DOMAIN}"
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
    **_rpcs("shop.cart.v1.CartService", {
        "AddItem": {"gateway"}, "SetItemQuantity": {"gateway"}, "GetCart": {"gateway"},
        "CheckoutCart": {"order"}}),
    **_rpcs("shop.inventory.v1.InventoryService", {
        "CreateHolds": {"cart"}, "ResizeHold": {"cart"}, "ChangeHolds": {"cart"},
        "ReleaseHolds": {"cart", "order"}, "ExtendHolds": {"cart", "order"},
        "GetHolds": {"cart", "order"}, "ListHolds": {"cart", "order"},
        "CommitHolds": {"order"}, "GetAvailability": {"catalog"},
        "SetStock": {"gateway"}, "GetStock": {"gateway"}}),
    **_rpcs("shop.order.v1.OrderService", {
        "Checkout": {"gateway"}, "Pay": {"gateway"}, "GetOrder": {"gateway"}, "ListOrders": {"gateway"}}),
}
# The RPCs CALLERS governs; others (gRPC health, reflection) are open to every certificate of the suite.
SUITE_RPC_PREFIX = "/shop."


def cert_file(identity: str) -> str:
    """The file name of `identity`'s certificate in TLS_DIR."""
    return f"{identity}.pem"


def key_file(identity: str) -> str:
    """The file name of `identity`'s private key in TLS_DIR."""
    return f"{identity}-key.pem"


def server_name(identity: str) -> str:
    """The DNS name `identity`'s certificate carries, and that its callers check."""
    return f"{identity}.{DOMAIN}"


@dataclass(frozen=True)
class Tls:
    """One identity's key and certificate, and the suite's CA."""

    identity: str
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, directory: str | Path, identity: str) -> "Tls":
        """Reads `identity`'s files from `directory`; a missing one is an OSError naming it."""
        directory = Path(directory)
        return cls(identity, (directory / CA_FILE).read_bytes(), (directory / cert_file(identity)).read_bytes(),
                   (directory / key_file(identity)).read_bytes())

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serves with this identity's certificate, and takes only callers with a certificate of the suite."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Calls with this identity's certificate, trusting only servers with a certificate of the suite."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


def channel(target: str, service: str, tls: Tls | None, options: list[tuple[str, object]] | None = None
            ) -> grpc.aio.Channel:
    """A channel to an instance of `service` at `target`: over TLS, checked to be `service`, when `tls` is given."""
    options = list(options or [])
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.channel_credentials(),
                                   options=[*options, ("grpc.ssl_target_name_override", server_name(service))])


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
    plaintext, identity = auth.get("transport_security_type") == [b"insecure"], names[0].decode() if names else None
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
