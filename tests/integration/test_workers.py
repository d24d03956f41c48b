"""WORKERS=2: two full instances of a service from one command, which end on a stop or with their supervisor."""

import os
import re
import signal
import socket

import grpc
import psycopg
import pytest

from devstack.procs import Proc, on_free_ports, wait_until, wait_up
from devstack.stack import free_port, http_get, passing_instances, service_process
from tests.proctable import alive, children
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop_runtime.config import DB_CONNECTIONS


def _worker_pids(proc: Proc) -> dict[str, int]:
    """Worker name -> pid, from the lines honcho prints as it starts each worker."""
    return {name: int(pid) for name, pid in re.findall(r"(inventory\.\d+) started \(pid=(\d+)\)", proc.log())}


def _ids(pids: dict[str, int]) -> set[str]:
    host = socket.gethostname()
    return {f"inventory-{host}-{pid}" for pid in pids.values()}


def _mine(ports, ids: set[str]) -> list[dict]:
    return [e for e in passing_instances(ports, "inventory") if e["Service"]["ID"] in ids]


def _registered(ports, ids: set[str]) -> set[str]:
    _, body = http_get(f"http://{ports.consul_addr}/v1/agent/services")
    return {i for i in ids if i.encode() in body}


def _availability(port: int, sku: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        answer = stub.GetAvailability(inventory_pb2.GetAvailabilityRequest(skus=[sku]), timeout=10)
    return {i.sku: i.available for i in answer.items}[sku]


def _start_two_workers(ports, dsn, log_dir, name):
    """An inventory service with two workers, the first on a port of its own (picked again if it was taken before
    the worker bound it); waits for both to pass."""
    def start(first: int):
        proc = Proc(service_process("inventory", ports, dsn, port=first, name=name, workers=2), log_dir)
        try:
            pids = wait_up([proc], lambda: len(p := _worker_pids(proc)) == 2 and p, 30, "two workers")
            entries = wait_up([proc], lambda: len(e := _mine(ports, _ids(pids))) == 2 and e, 40,
                              "both workers passing in Consul")
        except BaseException:
            proc.stop()
            raise
        return proc, pids, entries

    first, (proc, pids, entries) = on_free_ports(start, free_port, name)
    return proc, first, pids, entries


def test_two_workers_register_serve_and_stop_together_on_one_sigterm(fresh_dsn, consul, ports, log_dir):
    proc, first, pids, entries = _start_two_workers(ports, fresh_dsn, log_dir, "inventory-2w")
    try:
        assert len(set(pids.values()) | {proc.pid}) == 3, "two worker processes besides the supervisor"
        worker_ports = {e["Service"]["Port"] for e in entries}
        assert len({e["Service"]["ID"] for e in entries}) == 2
        assert len(worker_ports) == 2, "each worker listens on its own port"
        assert first in worker_ports, "the first worker takes the service's configured port"
        for entry in entries:
            (check,) = [c for c in entry["Checks"] if c["ServiceID"] == entry["Service"]["ID"]]
            assert (check["Type"], check["Status"]) == ("grpc", "passing")

        # Both are full instances on the one database: stock set through one is read through the other.
        with grpc.insecure_channel(f"127.0.0.1:{first}") as channel:
            inventory_pb2_grpc.InventoryServiceStub(channel).SetStock(
                inventory_pb2.SetStockRequest(sku="W-1", on_hand=7), metadata=[("x-shop-user-id", "ops")], timeout=10)
        assert {p: _availability(p, "W-1") for p in worker_ports} == dict.fromkeys(worker_ports, 7)

        # Each worker's pool is its share of the service's budget (DB_CONNECTIONS / 2).
        with psycopg.connect(fresh_dsn) as conn:
            backends = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                    " AND pid <> pg_backend_pid()").fetchone()[0]
        assert backends <= DB_CONNECTIONS
        assert f"each with a pool of up to {DB_CONNECTIONS // 2} connections" in proc.log()

        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(30) == 0, proc.log()
        log = proc.log()
        for name, pid in pids.items():
            assert not alive(pid), f"{name} must have stopped with its supervisor"
            assert f"{name} stopped (rc=0)" in log, "each worker drains and exits cleanly"
            assert "SIGKILL" not in log
        assert log.count("stopping: NOT_SERVING, leaving Consul, draining") == 2
        assert _mine(ports, _ids(pids)) == []
        assert _registered(ports, _ids(pids)) == set(), "both instances must be deregistered, not just failing"
    finally:
        proc.stop()
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_leave_when_their_supervisor_is_killed(fresh_dsn, consul, ports, log_dir):
    proc, _, pids, _ = _start_two_workers(ports, fresh_dsn, log_dir, "inventory-orphans")
    try:
        # SIGKILL of the supervisor's whole process group: nothing of it can pass the stop on.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in pids.values()), 30, what="the workers to stop")
        assert _registered(ports, _ids(pids)) == set(), "orphaned workers must leave Consul"
    finally:
        proc.stop()
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_leave_and_exit_when_their_supervisor_alone_is_killed(fresh_dsn, consul, ports, log_dir):
    """kill -9 of the supervisor's process only (a replica's main process under supervisord): honcho's intermediate
    process above each worker survives it, so a worker that watched its parent would serve on, still registered."""
    proc, _, pids, _ = _start_two_workers(ports, fresh_dsn, log_dir, "inventory-supervisor-killed")
    intermediates = children(proc.pid) - set(pids.values())
    try:
        assert len(intermediates) == 2, "one honcho process above each worker"
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)
        assert all(alive(pid) for pid in intermediates), "the workers' parents outlive the supervisor"
        wait_until(lambda: _registered(ports, _ids(pids)) == set(), 10, 0.1, what="the workers out of Consul")
        wait_until(lambda: not any(alive(pid) for pid in [*pids.values(), *intermediates]), 15, 0.1,
                   what="the workers (and honcho's processes above them) to exit")
    finally:
        proc.stop()
        for pid in [*pids.values(), *intermediates]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_process_started_on_a_port_already_taken_fails_naming_it(workers, fresh_dsn, consul, ports, log_dir):
    """No two processes share a service port by accident: the second one to bind it exits non-zero, naming the
    address, and the first one serves on alone."""
    port = free_port()
    first = Proc(service_process("inventory", ports, fresh_dsn, port=port, name="inventory-port-owner"), log_dir)
    second = None
    try:
        first_id = f"inventory-{socket.gethostname()}-{first.pid}"
        wait_until(lambda: first.popen.poll() is not None or _mine(ports, {first_id}), 30,
                   what="the first process passing in Consul")
        assert first.popen.poll() is None, first.log()
        second = Proc(service_process("inventory", ports, fresh_dsn, port=port, name="inventory-port-taken",
                                      workers=workers), log_dir)
        assert second.popen.wait(30) != 0, second.log()
        assert f"cannot listen on 127.0.0.1:{port}: its port is taken" in second.log()
        assert [e["Service"]["ID"] for e in passing_instances(ports, "inventory")
                if e["Service"]["Port"] == port] == [first_id], "only the first process is listed on the port"
        assert _availability(port, "P-1") == 0 and first.popen.poll() is None, "the first process serves on"
    finally:
        if second is not None:
            second.stop()
        first.stop()


@pytest.mark.parametrize("workers", ["0", "many", "65"])
def test_a_bad_worker_count_fails_fast_naming_the_variable(workers, fresh_dsn, ports, log_dir):
    proc = Proc(service_process("inventory", ports, fresh_dsn, port=0, name="inventory-badworkers",
                                workers=workers), log_dir)
    try:
        assert proc.popen.wait(20) == 2
        assert "WORKERS" in proc.log()
    finally:
        proc.stop()
