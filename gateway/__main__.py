"""`python -m gateway render|token|openapi`: Envoy's bootstrap, local tokens (`make token`), the OpenAPI document."""

import argparse
from pathlib import Path

from gateway.envoy import GatewayConfig, write_config
from gateway.identity import TOKEN_TTL_SECONDS, issue_token
from gateway.limits import GatewayLimits
from gateway.openapi import render as render_openapi
from shop_runtime.config import ConfigError

# The local issuer's keys, beside the checkout; the same folder `make run` configures Envoy with.
SECRETS = Path(__file__).resolve().parents[1] / ".secrets"


def main() -> None:
    """Renders the bootstrap, or prints a token."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser(
        "render", help="write Envoy's bootstrap",
        description="Writes Envoy's bootstrap. Its limits come from the environment: GATEWAY_RATE_LIMIT_PER_SECOND, "
                    "GATEWAY_RATE_LIMIT_BURST, GATEWAY_RATE_LIMIT_USERS, GATEWAY_MAX_REQUESTS_PER_SERVICE "
                    "(README, \"Rate limits\").")
    render.add_argument("--descriptor", type=Path, required=True, help="the descriptor set built by `make proto`")
    render.add_argument("--eds-dir", type=Path, required=True, help="the folder gateway.sync writes endpoints to")
    render.add_argument("--jwks", type=Path, required=True, help="the public keys tokens are checked against")
    render.add_argument("--out", type=Path, required=True, help="where to write the bootstrap JSON")
    render.add_argument("--listen", default="0.0.0.0", help="the REST listener's address")
    render.add_argument("--port", type=int, default=9000, help="the REST listener's port")
    render.add_argument("--admin-port", type=int, default=9901, help="Envoy's admin port (loopback only)")
    render.add_argument("--metrics-port", type=int, default=None, help="a listener on --listen serving only the admin's"
                        " /stats/prometheus and /ready (Prometheus and Consul's check from other hosts)")
    render.add_argument("--tls-dir", type=Path, default=None,
                        help="the suite's CA and the gateway's certificate (make secrets): call the services over "
                             "mutual TLS; without it, plaintext")
    token = sub.add_parser("token", help="print a token signed by the local key (made on first use)")
    token.add_argument("--user", required=True, help="the user id, the token's `sub`")
    token.add_argument("--role", default="", help="`admin` for the admin routes")
    token.add_argument("--ttl", type=int, default=TOKEN_TTL_SECONDS, help="seconds the token is valid")
    token.add_argument("--secrets", type=Path, default=SECRETS, help="where the signing key lives")
    spec = sub.add_parser("openapi", help="write the OpenAPI document of the REST routes")
    spec.add_argument("--descriptor", type=Path, required=True, help="the descriptor set built by `make proto`")
    spec.add_argument("--out", type=Path, required=True, help="where to write it")
    args = parser.parse_args()
    if args.command == "openapi":
        args.out.write_text(render_openapi(args.descriptor))
        return
    if args.command == "token":
        print(issue_token(args.secrets, args.user, args.role or None, args.ttl))
        return
    try:
        limits = GatewayLimits.from_env()
    except ConfigError as err:
        parser.exit(2, f"python -m gateway render: {err}\n")
    write_config(
        GatewayConfig(args.listen, args.port, args.admin_port, args.descriptor.resolve(), args.eds_dir.resolve(),
                      args.jwks.resolve(), limits, args.tls_dir.resolve() if args.tls_dir else None,
                      metrics_port=args.metrics_port),
        args.out,
    )


if __name__ == "__main__":
    main()
