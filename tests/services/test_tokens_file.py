"""auth.tokens_file: a server checks calls against a token store it only
reads (a read-only secret in a container) and makes no local admin token."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.auth import Role, TokenStore, admin_token_path
from mtserve.errors import PreconditionError
from mtserve_api.client import connect
from mtserve_api.registry import RegistryClient

from .conftest import make_settings, start_registry


def test_a_server_reads_the_tokens_file_and_makes_no_local_admin(tmp_path):
    provisioned = tmp_path / "operator-home"
    secret = TokenStore(provisioned).create("bootstrap", Role.ADMIN)
    tokens_file = provisioned / "auth" / "tokens.json"
    tokens_file.chmod(0o400)  # as a secret is mounted: read only
    server_home = tmp_path / "server-home"
    settings = make_settings(tmp_path, home=str(server_home), **{"auth.tokens_file": str(tokens_file)})
    registry, address = start_registry(settings)
    try:
        assert not admin_token_path(server_home).exists()
        assert not (server_home / "auth" / "tokens.json").exists()
        with RegistryClient(address, timeout=10, token=secret, settings=settings) as client:
            assert client.list_tasks() == []
        with RegistryClient(address, timeout=10, token="mts_" + "x" * 43, settings=settings) as client:
            with pytest.raises(Exception) as info:
                client.list_tasks()
            assert "UNAUTHENTICATED" in str(info.value)

        with connect(address, token=secret, settings=settings) as channel:  # health needs no token, as ever
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        registry.stop(grace=1)


def test_a_missing_tokens_file_stops_the_server_at_start(tmp_path):
    settings = make_settings(tmp_path, **{"auth.tokens_file": str(tmp_path / "nope.json")})
    with pytest.raises(PreconditionError) as info:
        start_registry(settings)
    assert "auth.tokens_file" in str(info.value) and "nope.json" in str(info.value)
