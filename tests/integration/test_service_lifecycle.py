"""Each service process: registers in Consul with a passing gRPC check, leaves the passing set on SIGTERM."""

import signal
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.stack import SERVICE_MODULES, http_get, passing_instances, service_process
from devstack.procs import Proc, wait_until


def _entry(ports, service, service_id):
    return next((e for e in passing_instances(ports, service) if e["Service"]["ID"] == service_id), None)


@pytest.mark.parametrize("service", sorted(SERVICE_MODULES))
def test_registers_with_grpc_check_and_deregisters_on_sigterm(service, fresh_dsn, consul, ports, log_dir):
    proc = Proc(service_process(service, ports, fresh_dsn, port=0, name=f"{service}-lifecycle"), log_dir)
    try:
        service_id = f"{service}-{socket.gethostname()}-{proc.pid}"
        entry = wait_until(lambda: proc.popen.poll() is not None or _entry(ports, service, service_id), 30,
                           what=f"{service} passing in Consul")
        assert proc.popen.poll() is None, proc.log()
        (check,) = [c for c in entry["Checks"] if c["ServiceID"] == service_id]
        assert check["Status"] == "passing"
        assert check["Type"] == "grpc"

        # The check is real: the standard health service of the registered port answers SERVING.
        port = entry["Service"]["Port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(20) == 0, proc.log()
        assert _entry(ports, service, service_id) is None
        _, body = http_get(f"http://{ports.consul_addr}/v1/agent/services")
        assert service_id.encode() not in body, "the instance must be deregistered, not just failing"
        assert "stopped" in proc.log()
    finally:
        proc.stop()


def test_a_missing_database_url_fails_fast_naming_it(ports, log_dir):
    spec = service_process("catalog", ports, "", port=0, name="catalog-nodsn")
    spec.env.pop("DATABASE_URL", None)
    spec.env.pop("CATALOG_DATABASE_URL", None)
    proc = Proc(spec, log_dir)
    try:
        assert proc.popen.wait(20) == 2
        assert "DATABASE_URL" in proc.log()
    finally:
        proc.stop()
