"""`python -m gateway render`: writes Envoy's bootstrap (deployments; `make run` renders its own)."""

import argparse
from pathlib import Path

from gateway.envoy import GatewayConfig, write_config


def main() -> None:
    """Renders the bootstrap to --out, with an empty EDS file per upstream under --eds-dir."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("command", choices=["render"])
    parser.add_argument("--descriptor", type=Path, required=True, help="the descriptor set built by `make proto`")
    parser.add_argument("--eds-dir", type=Path, required=True, help="the folder gateway.sync writes endpoints to")
    parser.add_argument("--out", type=Path, required=True, help="where to write the bootstrap JSON")
    parser.add_argument("--listen", default="0.0.0.0", help="the REST listener's address")
    parser.add_argument("--port", type=int, default=9000, help="the REST listener's port")
    parser.add_argument("--admin-port", type=int, default=9901, help="Envoy's admin port (loopback only)")
    args = parser.parse_args()
    write_config(
        GatewayConfig(args.listen, args.port, args.admin_port, args.descriptor.resolve(), args.eds_dir.resolve()),
        args.out,
    )


if __name__ == "__main__":
    main()
