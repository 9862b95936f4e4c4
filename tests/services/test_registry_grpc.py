"""The registry over real gRPC: every rejected call gets its exact status code
and a message naming the problem; health, reflection, the watch stream, the
error interceptor, and atomic promotions seen through GetRoutes."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mtserve.errors import ValidationError
from mtserve.records import RouteChange
from mtserve_api import convert
from mtserve_api.client import Credentials, connect, open_channel
from mtserve_api.v1 import registry_pb2 as rpb
from mtserve_api.v1 import registry_pb2_grpc as rpb_grpc
from services.common.server import Service

from .conftest import make_settings, start_registry


@pytest.fixture
def registry(db_url, tmp_path, hotel, tiny_llama_dir, tiny_qwen_dir):
    """A registry on SQLite and on PostgreSQL, with the hotel catalogue and both tiny checkpoints."""
    settings = make_settings(tmp_path, **{"registry.database_url": db_url})
    service, address = start_registry(settings)
    from mtserve_api.registry import RegistryClient

    client = RegistryClient(address, timeout=20)
    client.apply_catalogue(hotel)
    client.register_checkpoint(str(tiny_llama_dir))
    client.register_checkpoint(str(tiny_qwen_dir))
    channel = connect(address)
    yield service, address, client, rpb_grpc.RegistryStub(channel)
    channel.close()
    client.close()
    service.stop(grace=1)


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=20)
    return info.value


def test_invalid_task_definitions_are_refused_at_register_time(registry, hotel):
    _, _, _, stub = registry
    good = convert.task_to_pb(hotel.task("csqr"))
    cases = []
    bad = rpb.RegisterTaskRequest(task=good)
    bad.task.taxonomy = 0
    cases.append((bad, "task(csqr).taxonomy: must be one of binary, ordinal, multiclass, multilabel, generation (got None)"))
    bad = rpb.RegisterTaskRequest(task=good)
    del bad.task.labels[1:]
    cases.append((bad, "task(csqr).labels: a ordinal task needs at least 2 labels (got 1)"))
    bad = rpb.RegisterTaskRequest(task=good)
    bad.task.channels.append(convert.enum_to_pb(convert.Channel.EMAIL, convert.Channel))
    cases.append((bad, "task(csqr).channels: a conversation task applies to call and/or im only (got ['email'])"))
    bad = rpb.RegisterTaskRequest(task=good)
    bad.task.name = "x"
    cases.append((bad, "task.name: must match ^[a-z][a-z0-9_-]{1,63}$ (got 'x')"))
    for request, message in cases:
        err = rpc_error(stub.RegisterTask, request)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and err.details() == message
    err = rpc_error(stub.ApplyCatalogue, rpb.ApplyCatalogueRequest(catalogue="hotel", tasks=[good, cases[0][0].task]))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("tasks[1](csqr).taxonomy: must be one of")


def test_unknown_names_and_routes_to_unknown_checkpoints(registry):
    _, _, client, stub = registry
    err = rpc_error(stub.GetTask, rpb.GetTaskRequest(name="nope"))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "unknown task 'nope'")
    err = rpc_error(stub.SetRoute, rpb.SetRouteRequest(route=rpb.RouteChange(task="rc-a", checkpoint_id="ghost")))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert err.details() == "route.checkpoint_id: checkpoint 'ghost' is not registered (register it with `mtserve checkpoints register PATH`)"
    err = rpc_error(stub.SetRoutes, rpb.SetRoutesRequest(routes=[rpb.RouteChange(task="rc-a", checkpoint_id="tiny-llama"),
                                                                 rpb.RouteChange(task="ghost", checkpoint_id="tiny-llama")]))
    assert err.code() is grpc.StatusCode.NOT_FOUND and err.details().startswith("routes[1].task: unknown task 'ghost'")
    assert client.get_routes()[0] == []  # the valid half was not applied
    err = rpc_error(stub.SetRoute, rpb.SetRouteRequest(route=rpb.RouteChange(task="rc-a", checkpoint_id="tiny-llama", task_version=0)))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "route.task_version: must be a positive integer (omit it for the latest version) (got 0)")
    err = rpc_error(stub.RollbackRoute, rpb.RollbackRouteRequest(task="rc-a"))
    assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "task 'rc-a' has no route to roll back")
    err = rpc_error(stub.GetCheckpoint, rpb.GetCheckpointRequest(id="ghost"))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    err = rpc_error(stub.RegisterCheckpoint, rpb.RegisterCheckpointRequest(path=""))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "path: must name a folder (got '')")


def test_a_tampered_checkpoint_is_a_failed_precondition(registry, tiny_llama_dir, tmp_path):
    import shutil

    _, _, _, stub = registry
    copy = tmp_path / "tampered"
    shutil.copytree(tiny_llama_dir, copy)
    (copy / "generation_config.json").write_text("{}")
    err = rpc_error(stub.RegisterCheckpoint, rpb.RegisterCheckpointRequest(path=str(copy)))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith("checkpoint 'tiny-llama': generation_config.json has sha256")


def test_client_errors_are_domain_errors_naming_the_server(registry):
    _, address, client, _ = registry
    with pytest.raises(ValidationError) as info:
        client.get_task("Bad Name")
    assert str(info.value) == f"registry at {address}: INVALID_ARGUMENT: name: must match ^[a-z][a-z0-9_-]{{1,63}}$ (got 'Bad Name')"


def test_health_and_reflection(registry):
    _, address, _, _ = registry
    with connect(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "mtserve.v1.Registry"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"mtserve.v1.Registry", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_watch_sends_a_snapshot_then_one_change_per_commit(registry, hotel):
    service, _, client, _ = registry
    stream = client.watch("test")
    events = iter(stream)
    try:
        snapshot, state = next(events)
        assert snapshot and state.revision == service.store.revision()
        assert {r.name for r in state.tasks} == {t.name for t in hotel.tasks} and state.routes == ()
        _updates, revision = client.set_routes([RouteChange(t.name, "tiny-llama") for t in hotel.tasks], reason="promote")
        snapshot, change = next(events)
        # the whole promotion arrives as one change
        assert not snapshot and change.revision == revision and len(change.routes) == len(hotel.tasks) and change.tasks == ()
        client.register_task(dataclasses.replace(hotel.task("ec"), title="new title"))
        snapshot, change = next(events)
        # v2 is new; the routed v1 is resent because its latest_version moved to 2
        assert [(r.name, r.version, r.latest_version) for r in change.tasks] == [("ec", 1, 2), ("ec", 2, 2)] and change.routes == ()
    finally:
        stream.cancel()
    assert list(events) == []  # a cancelled stream just ends


def test_concurrent_reader_over_grpc_never_sees_half_a_promotion(registry, hotel):
    _, _, client, stub = registry
    names = [t.name for t in hotel.tasks]
    client.set_routes([RouteChange(n, "tiny-llama") for n in names])
    stop = threading.Event()
    mixed: list[set[str]] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            table = stub.GetRoutes(rpb.GetRoutesRequest(), timeout=20)
            reads[0] += 1
            ids = {r.checkpoint_id for r in table.routes}
            if len(ids) != 1 or len(table.routes) != len(names):
                mixed.append(ids)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(8):
            client.set_routes([RouteChange(n, "tiny-qwen" if i % 2 == 0 else "tiny-llama") for n in names], reason=f"promotion {i}")
    finally:
        stop.set()
        thread.join()
    assert reads[0] > 0 and mixed == []


def test_the_interceptor_hides_unexpected_errors_and_maps_domain_errors(caplog):
    """A server whose handlers raise: domain errors become their status code
    with the message; anything else becomes INTERNAL with an error id, and
    the detail stays in the log."""
    from mtserve.errors import IntegrityError, OverloadedError, UnavailableError

    raised = {
        "boom": RuntimeError("secret database password in this message"),
        "full": OverloadedError("queue full (3 waiting)"),
        "down": UnavailableError("shutting down"),
        "bad": IntegrityError("model.safetensors has sha256 abc"),
    }

    def handler(request: bytes, context) -> bytes:
        raise raised[request.decode()]

    service = Service(["test.Echo"], service="test", max_workers=2, max_message_bytes=1 << 20, grace_seconds=1)
    service.server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(handler)}),)
    )
    port = service.bind("127.0.0.1:0")
    service.start()
    try:
        with open_channel(f"127.0.0.1:{port}", (), Credentials(None, None)) as channel:  # a bare Service: no TLS, no auth
            call = channel.unary_unary("/test.Echo/Call")
            expected = {
                "full": grpc.StatusCode.RESOURCE_EXHAUSTED,
                "down": grpc.StatusCode.UNAVAILABLE,
                "bad": grpc.StatusCode.FAILED_PRECONDITION,
            }
            for key, code in expected.items():
                with pytest.raises(grpc.RpcError) as info:
                    call(key.encode(), timeout=5)
                assert info.value.code() is code and info.value.details() == str(raised[key])
            with caplog.at_level("ERROR"), pytest.raises(grpc.RpcError) as info:
                call(b"boom", timeout=5)
            assert info.value.code() is grpc.StatusCode.INTERNAL
            assert "secret" not in info.value.details() and "error id" in info.value.details()
            ref = info.value.details().split("error id ")[1].split(";")[0]
            assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        service.stop(grace=0)


def test_a_second_server_cannot_take_a_port_in_use(registry, tmp_path: Path):
    from mtserve.errors import UnavailableError
    from services.registry.server import create_server

    _, address, _, _ = registry
    with pytest.raises(UnavailableError, match="cannot listen on"):
        create_server(address, make_settings(tmp_path / "other"))


def test_an_undecodable_body_is_invalid_argument_not_internal(registry):
    """grpcio answers a body its deserializer cannot decode with INTERNAL and
    keeps ~16 KB per such call (scripts/grpc_undecodable_memory.py); the
    interceptor decodes first and refuses it as the caller's error."""
    _, address, _, _ = registry
    with connect(address) as channel:
        raw = channel.unary_unary("/mtserve.v1.Registry/GetRoutes", request_serializer=None, response_deserializer=None)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as refused:
                raw(b"\xff\xff\xff\xff", timeout=10)
            assert (refused.value.code(), refused.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT, "request: the body is not a valid request message of /mtserve.v1.Registry/GetRoutes"
            )
        stream = channel.unary_stream("/mtserve.v1.Registry/Watch", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(stream(b"\xff\xff\xff\xff", timeout=10)))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert raw(b"", timeout=10) is not None  # an empty body is a valid (default) message
