"""The channel every client builds: which methods its service config
retries, client-side health checking, and the name TLS verifies for a
target of several replicas. No server needed."""

from __future__ import annotations

import pytest

from mtserve.errors import ValidationError
from mtserve_api.client import RETRY_POLICY, replica_hosts, service_config, tls_server_name
from mtserve_api.inference import InferenceClient
from mtserve_api.registry import RegistryClient
from services.trainer.client import TrainerClient


def retried(config: dict) -> set[str]:
    return {n["method"] for c in config.get("methodConfig", []) if "retryPolicy" in c for n in c["name"]}


def test_the_retry_policy_is_unavailable_only_with_backoff():
    assert RETRY_POLICY == {
        "maxAttempts": 4, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
    }


def test_round_robin_always_and_retries_only_for_the_listed_methods():
    config = service_config("mtserve.v1.Inference", retry=["Classify"], health_check=True)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["methodConfig"] == [{"name": [{"service": "mtserve.v1.Inference", "method": "Classify"}], "retryPolicy": RETRY_POLICY}]
    assert config["healthCheckConfig"] == {"serviceName": "mtserve.v1.Inference"}
    bare = service_config("mtserve.v1.Registry")
    assert bare == {"loadBalancingConfig": [{"round_robin": {}}]}  # no method retried, no health checking


def test_each_client_retries_its_reads_and_scoring_never_a_write():
    assert set(InferenceClient.RETRY) == {"Classify", "ClassifyMany", "Generate", "ModelInfo"} and InferenceClient.HEALTH_CHECK
    reads = set(RegistryClient.RETRY)
    assert all(m.startswith(("Get", "List")) or m == "Watch" for m in reads), reads
    assert not reads & {"RegisterTask", "ApplyCatalogue", "RetireTask", "RegisterCheckpoint", "SetRoute", "SetRoutes", "RollbackRoute"}
    assert set(TrainerClient.RETRY) == {"GetJob", "ListJobs", "WatchJob"}
    assert not RegistryClient.HEALTH_CHECK and not TrainerClient.HEALTH_CHECK  # one instance each: its own refusal is the better message


@pytest.mark.parametrize("target, hosts", [
    ("127.0.0.1:50052", None),
    ("localhost:50052", None),
    ("dns:///inference.internal:50052", None),
    ("ipv4:127.0.0.1:50052", ["127.0.0.1"]),
    ("ipv4:127.0.0.1:50052,127.0.0.1:50053", ["127.0.0.1", "127.0.0.1"]),
    ("ipv4:///10.0.0.5:50052,10.0.0.6:50052", ["10.0.0.5", "10.0.0.6"]),
    ("ipv6:[::1]:50052,[::1]:50053", ["::1", "::1"]),
])
def test_replica_hosts(target, hosts):
    assert replica_hosts(target) == hosts


def test_a_malformed_address_list_names_the_address():
    with pytest.raises(ValidationError) as info:
        replica_hosts("ipv4:127.0.0.1:50052,127.0.0.1")
    assert "every address of an ipv4: target is HOST:PORT (got '127.0.0.1')" in str(info.value)


def test_the_tls_name_of_a_target():
    assert tls_server_name("127.0.0.1:50052", None) is None  # gRPC verifies the target's own host
    assert tls_server_name("dns:///localhost:50052", None) is None
    assert tls_server_name("ipv4:127.0.0.1:50052,127.0.0.1:50053", None) == "127.0.0.1"  # replicas on one host
    assert tls_server_name("ipv4:10.0.0.5:50052,10.0.0.6:50052", "inference.internal") == "inference.internal"
    with pytest.raises(ValidationError) as info:
        tls_server_name("ipv4:10.0.0.5:50052,10.0.0.6:50052", None)
    assert info.value.field == "tls.server_name"
    assert "lists replicas on 2 hosts (10.0.0.5, 10.0.0.6): set tls.server_name to a name every replica's certificate covers" in str(info.value)
