"""`make secrets`: everything a deployment keeps secret, made once on the machine that deploys and never committed:
the suite's CA and certificates (devstack.certs, in .secrets/tls), the local token issuer's keys (gateway.identity,
in .secrets), and in `.env`, which docker-compose reads, Consul's ACL tokens (CONSUL_MASTER_TOKEN and one
CONSUL_TOKEN_<IDENTITY> per identity of devstack.consul_setup, Patroni's among them) and the Postgres cluster's
passwords between its members (PASSWORD_VARIABLES). Values already there are kept."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from devstack.certs import ensure_certs
from devstack.consul_setup import IDENTITIES, token_variable
from devstack.stack import ROOT, SECRETS_DIR, TLS_DIR
from gateway.identity import ensure_keys

MASTER_VARIABLE = "CONSUL_MASTER_TOKEN"
# The compose cluster's Postgres superuser (Patroni's own connections, pg_rewind), its replication user, and the
# user of the Patroni REST API's changing calls (switchover, restart, ...; the members' calls to each other too).
PASSWORD_VARIABLES = ("POSTGRES_SUPERUSER_PASSWORD", "POSTGRES_REPLICATION_PASSWORD", "PATRONI_API_PASSWORD")


def compose_variables() -> tuple[str, ...]:
    """Every secret `make secrets` writes into .env for docker-compose."""
    return (MASTER_VARIABLE, *(token_variable(i) for i in IDENTITIES), *PASSWORD_VARIABLES)


def read_env(path: Path) -> dict[str, str]:
    """The NAME=value lines of a .env file."""
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def ensure_compose_env(path: Path) -> dict[str, str]:
    """Adds to `path` a random value for each secret of compose_variables() it lacks; returns them all."""
    values = read_env(path)
    added = []
    for name in compose_variables():
        if not values.get(name):
            values[name] = str(uuid.uuid4())
            added.append(f"{name}={values[name]}")
    if added:
        text = path.read_text() if path.exists() else "# Secrets of the compose deployment (make secrets); never commit.\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        with os.fdopen(fd, "w") as f:
            f.write(text.rstrip("\n") + "\n" + "\n".join(added) + "\n")
    return values


def open_to_containers() -> None:
    """The compose services run as `nobody` and Consul as its own user, and read the certificates and keys through a
    bind mount of .secrets/tls: the files are made readable inside it, and .secrets itself closed to other users of
    this host."""
    SECRETS_DIR.chmod(0o700)
    TLS_DIR.chmod(0o755)
    for path in TLS_DIR.glob("*.pem"):
        path.chmod(0o644)


def main() -> None:
    ensure_certs(TLS_DIR)
    open_to_containers()
    ensure_keys(SECRETS_DIR)
    ensure_compose_env(ROOT / ".env")
    print(f"certificates in {TLS_DIR.relative_to(ROOT)}/, token keys in {SECRETS_DIR.relative_to(ROOT)}/, "
          "Consul ACL tokens and Postgres passwords in .env")


if __name__ == "__main__":
    main()
