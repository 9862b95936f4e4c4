"""services/common/health.py on a bare gRPC server: Check and Watch as
grpc.health.v1 specifies, the graceful-shutdown freeze, and the deadlock of
grpc_health's reference servicer (a Watch closing while a status changes)
that it must not have. The churn is bounded (2 s) and loopback only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, HealthServicer


@pytest.fixture
def served() -> Iterator[tuple[HealthServicer, health_pb2_grpc.HealthStub]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, health_pb2_grpc.HealthStub(channel)
    channel.close()
    server.stop(0)


def check(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_check_and_watch(served):
    servicer, stub = served
    assert check(stub, "") == SERVING
    with pytest.raises(grpc.RpcError) as info:
        check(stub, "nope")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    servicer.set("svc", NOT_SERVING)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="svc"), timeout=30)
    assert next(watch).status == NOT_SERVING  # the current status first
    servicer.set("svc", SERVING)
    servicer.set("svc", NOT_SERVING)
    assert [next(watch).status, next(watch).status] == [SERVING, NOT_SERVING]  # then every change, in order
    watch.cancel()
    unknown = stub.Watch(health_pb2.HealthCheckRequest(service="later"), timeout=30)
    assert next(unknown).status == SERVICE_UNKNOWN  # not an error: the service may appear
    servicer.set("later", SERVING)
    assert next(unknown).status == SERVING
    unknown.cancel()


def test_graceful_shutdown_freezes_every_service_not_serving(served):
    servicer, stub = served
    servicer.set("svc", SERVING)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="svc"), timeout=30)
    assert next(watch).status == SERVING
    servicer.enter_graceful_shutdown()
    assert next(watch).status == NOT_SERVING
    servicer.set("svc", SERVING)  # ignored from now on
    assert check(stub, "svc") == NOT_SERVING and check(stub, "") == NOT_SERVING
    watch.cancel()


def test_watches_closing_while_the_status_changes_do_not_stop_the_server(served):
    """grpc_health's own servicer sends under its lock and its close
    callback, on the server thread, takes the same lock: this churn stopped
    that server within the 2 s (every time, with grpcio 1.85)."""
    servicer, stub = served
    stop = threading.Event()

    def flip() -> None:
        i = 0
        while not stop.is_set():
            servicer.set("svc", SERVING if i % 2 else NOT_SERVING)
            i += 1

    def churn() -> None:
        while not stop.is_set():
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="svc"), timeout=5)
            try:
                next(watch)
            except grpc.RpcError:
                pass
            watch.cancel()

    threads = [threading.Thread(target=flip, daemon=True)] + [threading.Thread(target=churn, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a sender or a watcher hung"
    assert check(stub, "svc") in (SERVING, NOT_SERVING)  # the server still answers
