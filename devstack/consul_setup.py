"""What a Consul needs before the suite uses it: the store's default settings in KV and, where ACLs are on (the compose
deployment: default deny), a policy and a token per identity of the suite.

`python -m devstack.consul_setup` (compose's `consul-setup` job) runs it with the management token in
CONSUL_HTTP_TOKEN and the suite's tokens in CONSUL_TOKEN_<IDENTITY> (`make secrets` writes them into `.env`). It can
run any number of times: policies are brought to what is written here, tokens made once with the given secrets, and
a default written only where its key is missing, so an operator's value stays.

Each token may do only what its holder needs:

- a service registers itself and only under its own name, reads every service and node (discovery), reads the
  store's settings; it cannot write them nor register as another service;
- gateway-sync reads services and nodes, and registers itself and Envoy (services `gateway-sync`, `envoy`);
- `prometheus` (the target sync beside Prometheus) reads services and nodes, nothing more;
- the agent's own token registers its node;
- `operator` also changes the store's settings (shop/config/);
- `patroni` (the compose cluster's members) keeps its cluster's state under `service/postgres/` (leader lock, member
  list, its settings), holds the sessions that lock rests on, and registers the members as service `postgres`; it
  reads nothing else, not the store's settings nor other services;
- without a token (anonymous) nothing can be read or written.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SERVICES = ("catalog", "cart", "inventory", "order")
# The Patroni cluster's scope: its KV prefix (under Patroni's namespace `/service/`) and its Consul service name
# (devstack.patroni.SCOPE; not imported, so the compose setup job needs none of Patroni's dependencies).
PATRONI_SCOPE = "postgres"
KV_PREFIX = "shop/config/"
KV_DEFAULTS = Path(__file__).resolve().parents[1] / "consul" / "kv-defaults.json"

_DISCOVERY = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
RULES = {
    **{s: f'service "{s}" {{ policy = "write" }}\n{_DISCOVERY}key_prefix "{KV_PREFIX}" {{ policy = "read" }}\n'
       for s in SERVICES},
    # It also registers itself and the Envoy it feeds, for Prometheus (gateway.sync).
    "gateway-sync": f'service "gateway-sync" {{ policy = "write" }}\nservice "envoy" {{ policy = "write" }}\n{_DISCOVERY}',
    # Prometheus's target sync (monitoring.targets) reads where every instance is, and nothing else.
    "prometheus": _DISCOVERY,
    "agent": 'node_prefix "" { policy = "write" }\nservice_prefix "" { policy = "read" }\n',
    "operator": f'{_DISCOVERY}key_prefix "{KV_PREFIX}" {{ policy = "write" }}\n',
    # A session is made on the node of the agent Patroni talks to; which node that is is the deployment's choice.
    "patroni": (f'key_prefix "service/{PATRONI_SCOPE}/" {{ policy = "write" }}\n'
                'session_prefix "" { policy = "write" }\n'
                f'service "{PATRONI_SCOPE}" {{ policy = "write" }}\n'),
}
IDENTITIES = tuple(RULES)

_LOGGER = logging.getLogger(__name__)


def token_variable(identity: str) -> str:
    """The environment variable that carries `identity`'s token: CONSUL_TOKEN_GATEWAY_SYNC, say."""
    return "CONSUL_TOKEN_" + identity.upper().replace("-", "_")


class Consul:
    """The few calls of Consul's HTTP API this needs, with one token (py-consul is asyncio-only here and has no
    call that creates a token with a secret of our choosing)."""

    def __init__(self, address: str, token: str = ""):
        self._base = "http://" + address.removeprefix("http://")
        self._token = token

    def call(self, method: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self._base + path, data=data, method=method)
        if self._token:
            request.add_header("X-Consul-Token", self._token)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read()
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text.decode(errors="replace")

    def ok(self, method: str, path: str, body: object = None, raw: bytes | None = None) -> Any:
        status, answer = self.call(method, path, body, raw)
        if status != 200:
            raise RuntimeError(f"Consul refused {method} {path}: {status} {answer}")
        return answer


def wait_for_leader(consul: Consul, timeout: float = 60.0) -> None:
    """Waits until the agent answers and its cluster has a leader (ACL writes need one)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if consul.call("GET", "/v1/status/leader")[1]:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("Consul has no leader")
        time.sleep(0.5)


def load_kv_defaults(consul: Consul) -> None:
    """Writes each default setting where its key is missing (cas=0)."""
    for key, value in json.loads(KV_DEFAULTS.read_text()).items():
        consul.ok("PUT", f"/v1/kv/{key}?cas=0", raw=value.encode())


def apply_acls(consul: Consul, tokens: dict[str, str]) -> None:
    """Brings every identity's policy to RULES and makes each token of `tokens` (identity -> secret) that does not
    exist yet; then gives the agent its token."""
    existing = {p["Name"]: p["ID"] for p in consul.ok("GET", "/v1/acl/policies")}
    for identity, rules in RULES.items():
        name = f"shop-{identity}"
        policy = {"Name": name, "Description": f"the shop suite's {identity}", "Rules": rules}
        if name in existing:
            consul.ok("PUT", f"/v1/acl/policy/{existing[name]}", policy)
        else:
            consul.ok("PUT", "/v1/acl/policy", policy)
    for identity, secret in tokens.items():
        if Consul(consul._base, secret).call("GET", "/v1/acl/token/self")[0] == 200:
            continue
        consul.ok("PUT", "/v1/acl/token", {"SecretID": secret, "Description": f"the shop suite's {identity}",
                                           "Policies": [{"Name": f"shop-{identity}"}]})
        _LOGGER.info("made the Consul token of %s", identity)
    if "agent" in tokens:
        consul.ok("PUT", "/v1/agent/token/agent", {"Token": tokens["agent"]})


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s consul-setup: %(message)s")
    consul = Consul(os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500"), os.environ.get("CONSUL_HTTP_TOKEN", ""))
    wait_for_leader(consul)
    tokens = {i: os.environ[token_variable(i)] for i in IDENTITIES if os.environ.get(token_variable(i))}
    if tokens:
        apply_acls(consul, tokens)
    else:
        _LOGGER.warning("no CONSUL_TOKEN_* set: ACL policies and tokens left as they are")
    load_kv_defaults(consul)
    _LOGGER.info("done: %d token(s), default settings in %s", len(tokens), KV_PREFIX)


if __name__ == "__main__":
    main()
