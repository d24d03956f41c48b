"""Mutual TLS between the suite's processes: each one's certificate and key, and the credentials made of them."""

# With TLS_DIR set (shop_runtime.config), a service listens only for TLS callers that present a certificate signed by
# the suite's CA (devstack.certs makes it), and calls the other services over TLS with its own certificate, checking
# that the callee's certificate names the service it meant to call (`<service>.shop.internal`), whatever address
# Consul gave. Without TLS_DIR it serves and calls in plaintext and says so at start: for tests of one service and
# for a network that is private by other means. Who a caller is, and what it may call: shop_runtime.callers.

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

CA_FILE = "ca.pem"
DOMAIN = "shop.internal"
# The name Consul's health checks ask for (its agents' `server_name`), which every certificate of the suite carries
# besides its own: Consul 1.8 sends one name for every check, and a server asked for a name its certificate lacks
# logs an error for every check. Callers other than Consul check the service's own name.
CHECK_SERVER_NAME = f"health.{DOMAIN}"


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
