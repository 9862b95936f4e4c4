"""Who may call what, over real gRPC: every RPC of the three services, called
with no token, an unknown token and a token of each role; only the
combinations the role table allows get past the interceptor. Health answers
without a token; revoking a token takes effect without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.auth import Role, TokenStore
from mtserve.config import load_settings
from mtserve_api.client import Credentials, connect, open_channel
from mtserve_api.roles import ROLE_OF, allows
from mtserve_api.v1 import inference_pb2, registry_pb2, trainer_pb2

SERVICES = {"Registry": registry_pb2, "Inference": inference_pb2, "Trainer": trainer_pb2}
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
CALLERS = ["none", "unknown", *[r.label for r in Role]]
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}

# Several servers live at once in this module: their metrics endpoints (fixed default ports) stay off.
NO_METRICS = {"registry.metrics_address": "", "inference.metrics_address": "", "trainer.metrics_address": ""}


def every_rpc() -> dict[str, Any]:
    """Full method name -> its method descriptor, from the generated stubs."""
    out = {}
    for name, module in SERVICES.items():
        for method in module.DESCRIPTOR.services_by_name[name].methods:
            out[f"/mtserve.v1.{name}/{method.name}"] = method
    return out


def test_the_role_table_names_every_rpc_and_nothing_else():
    rpcs = set(every_rpc())
    assert rpcs - set(ROLE_OF) == set(), "RPCs without a role (refused to everyone until added to mtserve_api/roles.py)"
    assert set(ROLE_OF) - rpcs == {REFLECTION}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Registry, inference and trainer services on one home, and a token of each role."""
    from services.inference.server import create_server as inference_server
    from services.registry.server import create_server as registry_server
    from services.trainer.server import create_server as trainer_server

    home = tmp_path_factory.mktemp("auth-home")
    settings = load_settings(overrides={"home": str(home), "device": "cpu", "dtype": "float32", **NO_METRICS}, env={})
    servers = []
    addresses = {}
    for name, create in (("Registry", registry_server), ("Inference", inference_server), ("Trainer", trainer_server)):
        kw: dict[str, Any] = {"watch": False} if name == "Inference" else {}
        service, port = create("127.0.0.1:0", settings, **kw)
        servers.append(service.start())
        addresses[name] = f"127.0.0.1:{port}"
    store = TokenStore(home)
    tokens = {role.label: store.create(f"test-{role.label}", role) for role in Role}
    tokens["unknown"] = "mts_" + "x" * 43
    yield {"addresses": addresses, "tokens": tokens, "store": store, "home": home, "settings": settings, "tls": settings.client_tls()}
    for service in servers:
        service.stop(grace=1)


def call(address: str, method: str, descriptor: Any, token: str | None, tls: Any) -> grpc.StatusCode:
    """Call `method` with an empty request; the status it ends with."""
    from google.protobuf import message_factory

    request = message_factory.GetMessageClass(descriptor.input_type)()
    response = message_factory.GetMessageClass(descriptor.output_type)
    with open_channel(address, (), Credentials(token, tls)) as channel:
        if descriptor.server_streaming:
            stub = channel.unary_stream(method, request_serializer=type(request).SerializeToString,
                                        response_deserializer=response.FromString)
            try:
                next(iter(stub(request, timeout=5)))
            except StopIteration:
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK
        stub = channel.unary_unary(method, request_serializer=type(request).SerializeToString, response_deserializer=response.FromString)
        try:
            stub(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("method", sorted(every_rpc()))
def test_only_the_roles_the_table_allows_get_through(stack, method, caller):
    service = method.split("/")[1].split(".")[-1]
    token = None if caller == "none" else stack["tokens"][caller]
    code = call(stack["addresses"][service], method, every_rpc()[method], token, stack["tls"])
    if caller in ("none", "unknown"):
        assert code is grpc.StatusCode.UNAUTHENTICATED
    elif allows(method, Role.parse(caller)):
        assert code not in DENIED, f"{caller} refused {method}"  # past the interceptor: the servicer answered
    else:
        assert code is grpc.StatusCode.PERMISSION_DENIED


def test_refusals_tell_a_guesser_nothing_and_a_member_what_it_lacks(stack):
    address = stack["addresses"]["Registry"]
    with pytest.raises(grpc.RpcError) as unknown, connect(address, token="mts_guess", settings=stack["settings"]) as channel:
        channel.unary_unary("/mtserve.v1.Registry/GetRoutes")(b"", timeout=5)
    assert unknown.value.details() == "missing or unknown bearer token"
    with pytest.raises(grpc.RpcError) as low, connect(address, token=stack["tokens"]["client"], settings=stack["settings"]) as channel:
        channel.unary_unary("/mtserve.v1.Registry/SetRoute")(b"", timeout=5)
    assert low.value.details() == "/mtserve.v1.Registry/SetRoute needs the admin role; token 'test-client' has role client"


def test_health_answers_without_a_token_and_reflection_needs_one(stack):
    address = stack["addresses"]["Inference"]
    no_token = Credentials(None, stack["tls"])
    with open_channel(address, (), no_token) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with open_channel(address, (), no_token) as channel, pytest.raises(grpc.RpcError) as refused:
        list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=5))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with connect(address, token=stack["tokens"]["client"], settings=stack["settings"]) as channel:
        names = {s.name for r in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=5)
                 for s in r.list_services_response.service}
    assert "mtserve.v1.Inference" in names


def test_a_revoked_token_is_refused_by_running_services(stack):
    store: TokenStore = stack["store"]
    secret = store.create("soon-revoked", Role.CLIENT)
    address, method = stack["addresses"]["Registry"], "/mtserve.v1.Registry/GetRoutes"
    descriptor = every_rpc()[method]
    assert call(address, method, descriptor, secret, stack["tls"]) is grpc.StatusCode.OK
    TokenStore(Path(stack["home"])).revoke("soon-revoked")  # another process's view of the same file
    assert call(address, method, descriptor, secret, stack["tls"]) is grpc.StatusCode.UNAUTHENTICATED


def test_tls_round_trip_and_a_plaintext_client_is_refused_cleanly(stack):
    """The services speak TLS by default with the local CA of their home; a
    client that trusts it gets answers, a plaintext client gets UNAVAILABLE
    (the handshake fails) and the server keeps serving."""
    address, method = stack["addresses"]["Registry"], "/mtserve.v1.Registry/GetRoutes"
    descriptor = every_rpc()[method]
    token = stack["tokens"]["client"]
    assert call(address, method, descriptor, token, stack["tls"]) is grpc.StatusCode.OK
    assert call(address, method, descriptor, token, None) is grpc.StatusCode.UNAVAILABLE  # plaintext
    assert call(address, method, descriptor, token, stack["tls"]) is grpc.StatusCode.OK
    ca = (Path(stack["home"]) / "tls" / "ca.pem").read_bytes()
    assert stack["tls"].root_ca == ca and ((Path(stack["home"]) / "tls" / "ca.key").stat().st_mode & 0o777) == 0o600


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path):
    """With tls.client_ca_file set, a server asks for a client certificate
    signed by that CA: without one the call fails, with one it succeeds."""
    from mtserve.tls import ensure_local_ca, make_client_certificate
    from services.registry.server import create_server

    ca_dir = ensure_local_ca(tmp_path)
    over = {"home": str(tmp_path), "registry.database_url": f"sqlite:///{tmp_path / 'r.db'}", "tls.client_ca_file": str(ca_dir / "ca.pem"),
            **NO_METRICS}
    server, port = create_server("127.0.0.1:0", load_settings(overrides=over, env={}))
    server.start()
    try:
        address, method = f"127.0.0.1:{port}", "/mtserve.v1.Registry/GetRoutes"
        plain = load_settings(overrides={"home": str(tmp_path)}, env={})
        assert call(address, method, every_rpc()[method], plain.client_token(), plain.client_tls()) is grpc.StatusCode.UNAVAILABLE
        cert, key = make_client_certificate(tmp_path, "batch-worker-1", tmp_path / "client")
        mutual = load_settings(overrides={"home": str(tmp_path), "tls.client_cert_file": str(cert), "tls.client_key_file": str(key)}, env={})
        assert call(address, method, every_rpc()[method], mutual.client_token(), mutual.client_tls()) is grpc.StatusCode.OK
    finally:
        server.stop(grace=1)


@pytest.mark.parametrize("setting", ["auth.enabled", "tls.enabled"])
def test_turning_auth_or_tls_off_is_refused_off_loopback_and_announced(tmp_path, caplog, setting):
    from mtserve.errors import PreconditionError
    from services.common.server import server_tls, token_store

    check = token_store if setting == "auth.enabled" else server_tls
    off = load_settings(overrides={"home": str(tmp_path), setting: False}, env={})
    with pytest.raises(PreconditionError, match=f"{setting} is false: the registry service may then listen on a loopback address only"):
        check(off, "registry", "0.0.0.0:50051")
    with caplog.at_level("WARNING"):
        assert check(off, "registry", "127.0.0.1:50051") is None
    assert ("AUTH IS OFF" if setting == "auth.enabled" else "TLS IS OFF") in caplog.text
    assert check(load_settings(overrides={"home": str(tmp_path)}, env={}), "registry", "0.0.0.0:50051") is not None  # on by default
