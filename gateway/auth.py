"""Who may call what: the token check (JWT), the identity headers set from it, and admin-only routes (RBAC)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.identity import AUDIENCE, ISSUER
from gateway.routes import Method

# Verified tokens Envoy keeps (each worker thread), so a crowd's repeated requests skip the RSA check.
JWT_CACHE_SIZE = 20_000

# Paths anyone may call without a token (the catalog and the campaigns a storefront shows); everything else
# needs one.
PUBLIC_PREFIXES = ("/catalogs", "/campaigns")
# REST paths under this need a token whose `role` is admin.
ADMIN_PREFIX = "/admin/"
# Headers the gateway sets from a verified token; a client's own copies are removed first.
USER_HEADER = "x-shop-user-id"
ROLE_HEADER = "x-shop-role"


def identity_filters(jwks: Path, methods: list[Method]) -> list[dict[str, Any]]:
    """Strip client-sent identity headers, verify the token, set the headers from it, keep admin routes to admins."""
    admin_paths = [m.grpc_path for m in methods if m.rest_path.startswith(ADMIN_PREFIX)]
    admin_only = [{"url_path": {"path": {"prefix": ADMIN_PREFIX}}}] + [
        {"url_path": {"path": {"exact": p}}} for p in admin_paths]
    return [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"remove": USER_HEADER}, {"remove": ROLE_HEADER}]},
            },
        },
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {
                    "shop": {
                        "issuer": ISSUER,
                        "audiences": [AUDIENCE],
                        "local_jwks": {"filename": str(jwks)},
                        "forward": False,
                        "clock_skew_seconds": 30,
                        # A token without `exp` would never expire: refused.
                        "require_expiration": True,
                        # A storefront sends the same token with every click: its signature is checked once
                        # and the verified token kept (its expiry is still checked at every use).
                        "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE},
                        "claim_to_headers": [
                            {"header_name": USER_HEADER, "claim_name": "sub"},
                            {"header_name": ROLE_HEADER, "claim_name": "role"},
                        ],
                    }
                },
                "rules": [
                    *({"match": {"prefix": prefix}} for prefix in PUBLIC_PREFIXES),
                    {"match": {"prefix": "/"}, "requires": {"provider_name": "shop"}},
                ],
            },
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {
                    "action": "ALLOW",
                    "policies": {
                        "not-admin-routes": {
                            "permissions": [{"not_rule": {"or_rules": {"rules": admin_only}}}],
                            "principals": [{"any": True}],
                        },
                        # Admin RPCs are closed to everyone else by REST path and by gRPC path alike.
                        "admins": {
                            "permissions": [{"or_rules": {"rules": admin_only}}],
                            "principals": [{"header": {"name": ROLE_HEADER, "string_match": {"exact": "admin"}}}],
                        },
                    },
                },
            },
        },
    ]
