"""Consul with ACLs on, default deny, as the compose deployment runs it: devstack.consul_setup gives each identity
of the suite a token that does only what it needs, and the services, gateway.sync and Prometheus's target sync work with
theirs. A real
Consul agent and real service processes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from devstack.consul_setup import (IDENTITIES, Consul, apply_acls, load_kv_defaults, register_member_apis,
                                   wait_for_leader)
from devstack.patroni import SCOPE, local_cluster
from devstack.procs import Proc, start_consul, wait_until
from devstack.prometheus import targets_process
from devstack.stack import ProcessSpec, service_process

pytestmark = pytest.mark.integration

SETTING = "shop/config/payment_window_seconds"


def registration(name: str, port: int) -> dict:
    return {"Name": name, "ID": f"{name}-{uuid.uuid4().hex[:6]}", "Address": "127.0.0.1", "Port": port}


@pytest.fixture
def acl_consul(log_dir, tmp_path):
    """A Consul agent with ACLs on and default deny; yields its address, the management token and the suite's."""
    master = str(uuid.uuid4())
    config = tmp_path / "acl.json"
    config.write_text(json.dumps({"acl": {"enabled": True, "default_policy": "deny", "down_policy": "extend-cache",
                                          "tokens": {"master": master}}}))
    ports, agent = start_consul(log_dir, config_files=(config,))
    try:
        admin = Consul(ports.consul_addr, master)
        wait_for_leader(admin)
        tokens = {i: str(uuid.uuid4()) for i in IDENTITIES}
        wait_until(lambda: admin.call("GET", "/v1/acl/policies")[0] == 200, 30, what="ACLs ready")
        apply_acls(admin, tokens)
        load_kv_defaults(admin)
        yield ports, master, tokens
    finally:
        agent.stop()


def test_each_token_does_only_what_its_holder_needs_and_no_token_does_nothing(acl_consul):
    ports, master, tokens = acl_consul
    anonymous, cart = Consul(ports.consul_addr), Consul(ports.consul_addr, tokens["cart"])
    operator = Consul(ports.consul_addr, tokens["operator"])

    # Without a token: no registration (a fake `order` that would be sent card tokens), no settings read or written.
    assert anonymous.call("PUT", "/v1/agent/service/register", registration("order", 1))[0] == 403
    assert anonymous.call("PUT", f"/v1/kv/{SETTING}", raw=b"1")[0] == 403
    assert anonymous.call("GET", f"/v1/kv/{SETTING}")[0] == 403
    # A service registers under its own name only, reads settings, and cannot change them.
    assert cart.call("PUT", "/v1/agent/service/register", registration("order", 1))[0] == 403
    assert cart.call("PUT", "/v1/agent/service/register", registration("cart", 1))[0] == 200
    assert cart.call("GET", f"/v1/kv/{SETTING}")[0] == 200
    assert cart.call("PUT", f"/v1/kv/{SETTING}", raw=b"1")[0] == 403
    # gateway-sync reads where the services are, and nothing more.
    sync = Consul(ports.consul_addr, tokens["gateway-sync"])
    status, found = sync.call("GET", "/v1/health/service/cart")
    assert status == 200 and [e["Service"]["Service"] for e in found] == ["cart"]
    assert sync.call("PUT", "/v1/agent/service/register", registration("cart", 1))[0] == 403
    assert sync.call("GET", f"/v1/kv/{SETTING}")[0] == 403
    # The operator changes settings.
    assert operator.call("PUT", f"/v1/kv/{SETTING}", raw=b"600")[0] == 200
    assert Consul(ports.consul_addr, master).ok("GET", f"/v1/kv/{SETTING}?raw") == 600
    # Setting up again changes nothing and fails nothing (the compose job runs at every start).
    apply_acls(Consul(ports.consul_addr, master), tokens)
    assert cart.call("GET", "/v1/acl/token/self")[0] == 200


def test_a_service_and_gateway_sync_work_with_their_tokens(acl_consul, fresh_dsn, log_dir, tmp_path):
    ports, master, tokens = acl_consul
    admin = Consul(ports.consul_addr, master)
    eds = tmp_path / "eds"
    eds.mkdir()
    inventory = Proc(service_process("inventory", ports, fresh_dsn, port=0, name="inventory-acl",
                                     CONSUL_HTTP_TOKEN=tokens["inventory"], CONSUL_CHECK_INTERVAL="1s"), log_dir)
    sync = Proc(ProcessSpec("gateway-sync-acl", [sys.executable, "-m", "gateway.sync", "--eds-dir", str(eds)],
                            {**os.environ, "CONSUL_HTTP_ADDR": ports.consul_addr,
                             "CONSUL_HTTP_TOKEN": tokens["gateway-sync"]}),
                log_dir)

    def passing() -> list[int]:
        return [e["Service"]["Port"] for e in admin.ok("GET", "/v1/health/service/inventory?passing=true")]

    def endpoints() -> list[int]:
        try:
            doc = json.loads((eds / "inventory.json").read_text())
        except (OSError, ValueError):
            return []
        return [lb["endpoint"]["address"]["socket_address"]["port_value"]
                for group in doc["resources"][0]["endpoints"] for lb in group["lb_endpoints"]]

    try:
        wait_until(lambda: inventory.popen.poll() is not None or len(passing()) == 1, 60, what="inventory passing")
        assert inventory.popen.poll() is None, inventory.log()
        wait_until(lambda: endpoints() == passing(), 30, what="gateway.sync's endpoints")
        inventory.signal(signal.SIGTERM)
        assert inventory.popen.wait(30) == 0
        assert passing() == []  # it could deregister itself with its token
        # The sync registers itself for Prometheus with its token, and leaves when it stops.
        wait_until(lambda: [e["Service"]["Tags"] for e in admin.ok("GET", "/v1/health/service/gateway-sync")]
                   == [["metrics"]], 30, what="gateway-sync registered")
        sync.signal(signal.SIGTERM)
        assert sync.popen.wait(30) == 0
        assert admin.ok("GET", "/v1/health/service/gateway-sync") == []
    finally:
        inventory.stop()
        sync.stop()


def test_prometheus_target_sync_finds_the_services_on_its_token_alone_and_that_token_changes_nothing(
        acl_consul, log_dir, tmp_path):
    ports, master, tokens = acl_consul
    admin = Consul(ports.consul_addr, master)
    prometheus = Consul(ports.consul_addr, tokens["prometheus"])
    # Two instances registered as their owners do, with their own tokens; and one service without the tag.
    cart = {**registration("cart", 50052), "Tags": ["grpc", "metrics"], "Meta": {"metrics_port": "41001"}}
    assert Consul(ports.consul_addr, tokens["cart"]).call("PUT", "/v1/agent/service/register", cart)[0] == 200
    plain = {**registration("inventory", 50053), "Tags": ["grpc"]}
    assert Consul(ports.consul_addr, tokens["inventory"]).call("PUT", "/v1/agent/service/register", plain)[0] == 200
    out = tmp_path / "prometheus"
    sync = Proc(targets_process(ports, out, token=tokens["prometheus"]), log_dir)

    def found() -> dict[str, list[str]]:
        files = {}
        for path in (out / "targets").glob("*.json"):
            try:
                files[path.stem] = [(g["labels"]["instance"], g["targets"][0]) for g in json.loads(path.read_text())]
            except ValueError:
                raise AssertionError(f"{path} read half written") from None
        return files

    try:
        wait_until(lambda: found() == {"cart": [(cart["ID"], "127.0.0.1:41001")]}, 30,
                   what=f"the cart target from the prometheus token (found {found()})")
        # A service that appears later is found without a restart.
        order = {**registration("order", 50054), "Tags": ["metrics"], "Meta": {"metrics_port": "41004"}}
        assert Consul(ports.consul_addr, tokens["order"]).call("PUT", "/v1/agent/service/register", order)[0] == 200
        wait_until(lambda: found().get("order") == [(order["ID"], "127.0.0.1:41004")], 30, what="the order target")
        assert sync.popen.poll() is None, sync.log()
    finally:
        sync.stop()
    # Least privilege: it reads where services are, and may change nothing, read no setting, see no ACL.
    assert prometheus.call("GET", "/v1/catalog/services")[0] == 200
    assert prometheus.call("PUT", f"/v1/kv/{SETTING}", raw=b"1")[0] == 403
    assert prometheus.call("PUT", "/v1/kv/prometheus/anything", raw=b"1")[0] == 403
    assert prometheus.call("GET", f"/v1/kv/{SETTING}")[0] == 403
    assert prometheus.call("PUT", "/v1/agent/service/register", registration("prometheus", 9090))[0] == 403
    assert prometheus.call("PUT", "/v1/agent/service/register", registration("cart", 1))[0] == 403
    assert prometheus.call("PUT", f"/v1/agent/service/deregister/{cart['ID']}")[0] == 403
    assert prometheus.call("GET", "/v1/acl/policies")[0] == 403
    assert [e["Service"]["ID"] for e in admin.ok("GET", "/v1/health/service/cart")] == [cart["ID"]]



def test_consul_setup_registers_the_patroni_members_rest_apis_for_prometheus(acl_consul):
    ports, master, tokens = acl_consul
    admin = Consul(ports.consul_addr, master)
    for _ in range(2):  # at every start of the compose job: the same registrations
        register_member_apis(admin, ["pg1:8008", "pg2:8008"])
    found = sorted((e["Service"]["ID"], e["Service"]["Address"], e["Service"]["Port"], e["Service"]["Tags"],
                    e["Service"]["Meta"]["metrics_path"])
                   for e in Consul(ports.consul_addr, tokens["prometheus"]).ok("GET", "/v1/health/service/postgres-api"))
    assert found == [("postgres-api/pg1", "pg1", 8008, ["metrics"], "/metrics"),
                     ("postgres-api/pg2", "pg2", 8008, ["metrics"], "/metrics")]


def test_patronis_token_keeps_its_clusters_state_and_registers_postgres_and_nothing_more(acl_consul):
    ports, master, tokens = acl_consul
    patroni = Consul(ports.consul_addr, tokens["patroni"])
    state = f"/v1/kv/service/{SCOPE}"

    # What Patroni does: its cluster's keys, under a session of its own, and service `postgres` with its check.
    status, session = patroni.call("PUT", "/v1/session/create", {"Name": "postgres-pg1", "TTL": "10s",
                                                                 "Behavior": "delete", "Checks": []})
    assert status == 200, session
    assert patroni.call("PUT", f"{state}/leader?acquire={session['ID']}", raw=b"pg1") == (200, True)
    assert patroni.call("PUT", f"{state}/config?cas=0", raw=b"{}")[0] == 200
    assert patroni.call("GET", f"{state}/?recurse=true")[0] == 200
    assert patroni.call("PUT", f"/v1/session/renew/{session['ID']}")[0] == 200
    assert patroni.call("PUT", "/v1/agent/service/register", {
        **registration(SCOPE, 5432), "Tags": ["primary"],
        "Check": {"HTTP": "http://127.0.0.1:1/primary", "Interval": "2s", "DeregisterCriticalServiceAfter": "100s"},
    })[0] == 200
    # Nothing else of note: not the store's settings, not another cluster's keys, not another service's name (a
    # fake `order` that would be sent card tokens), not the other services' addresses, not the ACLs.
    assert patroni.call("GET", f"/v1/kv/{SETTING}")[0] == 403
    assert patroni.call("PUT", f"/v1/kv/{SETTING}", raw=b"1")[0] == 403
    assert patroni.call("PUT", f"/v1/kv/service/{SCOPE}-other/leader", raw=b"x")[0] == 403
    assert patroni.call("PUT", "/v1/kv/shop/anything", raw=b"x")[0] == 403
    assert patroni.call("PUT", "/v1/agent/service/register", registration("order", 1))[0] == 403
    cart = Consul(ports.consul_addr, tokens["cart"])
    assert cart.call("PUT", "/v1/agent/service/register", registration("cart", 1))[0] == 200
    assert patroni.call("GET", "/v1/health/service/cart") == (200, [])  # filtered out: it may not read it
    assert patroni.call("GET", "/v1/acl/policies")[0] == 403
    assert patroni.call("PUT", "/v1/acl/token", {"Policies": [{"Name": "shop-operator"}]})[0] == 403
    assert patroni.call("PUT", "/v1/agent/token/agent", {"Token": tokens["patroni"]})[0] == 403
    # And the services' tokens may not touch Patroni's state: no service can take the leader lock.
    assert cart.call("PUT", f"{state}/leader", raw=b"cart")[0] == 403
    assert Consul(ports.consul_addr).call("GET", f"{state}/leader")[0] == 403


def test_a_patroni_cluster_runs_on_patronis_token(acl_consul, log_dir):
    """Real Patroni members, with nothing but Patroni's token: they elect a primary in Consul, register as service
    `postgres` tagged primary and replica, and replicate synchronously."""
    ports, master, tokens = acl_consul
    admin = Consul(ports.consul_addr, master)
    home = Path(tempfile.mkdtemp(prefix="shop-test-acl-patroni-"))  # outside pytest's root: see devstack.patroni
    cluster = local_cluster(home, 2, ports.consul_addr, consul_token=tokens["patroni"])
    members: list[Proc] = []
    try:
        members = [Proc(spec, log_dir) for spec in cluster.processes()]
        try:
            cluster.wait_healthy(180)
        except TimeoutError:
            raise AssertionError("\n".join(m.tail() for m in members)) from None
        primary = cluster.primary()
        assert primary is not None
        leader = admin.ok("GET", f"/v1/kv/service/{SCOPE}/leader")
        assert base64.b64decode(leader[0]["Value"]).decode() == primary.name and leader[0]["Session"]

        def registered() -> list[tuple[int, list[str]]]:
            return sorted((e["Service"]["Port"], sorted(e["Service"]["Tags"]))
                          for e in admin.ok("GET", f"/v1/health/service/{SCOPE}?passing=true"))

        found = wait_until(lambda: len(registered()) == 2 and registered(), 60, what="both members passing")
        by_port = dict(found)
        assert "primary" in by_port[primary.pg_port]
        (standby,) = [m for m in cluster.members if m != primary]
        assert "replica" in by_port[standby.pg_port]
        print(f"\nConsul with Patroni's token: leader {primary.name}, service {SCOPE}: {found}")
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone() \
                == (1,)
    finally:
        for member in members:
            member.stop(60)
        shutil.rmtree(home, ignore_errors=True)
