"""The Prometheus endpoints, scraped over real HTTPS with a real token:
calls by RPC, task and status code, latency, labels served per task and
checkpoint, batch sizes, refusals, model load, process memory; and the
endpoint refuses a missing token (401) and a client-role one (403)."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtserve.auth import Role, TokenStore
from mtserve.config import load_settings
from mtserve.errors import NotFoundError
from mtserve.tls import tls_dir

from .conftest import make_settings, sample, start_stack


def scrape(url: str, home, token: str | None) -> dict[tuple[str, tuple], float]:
    context = ssl.create_default_context(cafile=str(tls_dir(home) / "ca.pem"))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(tmp_path, hotel, tiny_llama_dir):
    settings = make_settings(tmp_path, **{"inference.metrics_address": "127.0.0.1:0", "registry.metrics_address": "127.0.0.1:0"})
    stack = start_stack(settings, hotel, [tiny_llama_dir])
    yield stack
    stack.stop()


def test_a_scrape_shows_calls_tasks_labels_batches_and_memory(metered, session_home):
    stack = metered
    home = load_settings().home
    token = load_settings().client_token()
    url = f"https://localhost:{stack.inference.metrics_server.port}/metrics"
    before = scrape(url, home, token)
    client = stack.inference_client()
    answers = [client.classify("ec", sample("email")) for _ in range(3)]
    with pytest.raises(NotFoundError):
        client.classify("no-such-task", sample("email"))
    after = scrape(url, home, token)

    ok = {"service": "inference", "method": "Classify", "task": "ec", "code": "OK"}
    assert value(after, "mtserve_rpc_requests_total", **ok) - value(before, "mtserve_rpc_requests_total", **ok) == 3
    # An unknown task name mints no series: it is counted under task "-".
    nf = {"service": "inference", "method": "Classify", "task": "-", "code": "NOT_FOUND"}
    assert value(after, "mtserve_rpc_requests_total", **nf) - value(before, "mtserve_rpc_requests_total", **nf) == 1
    assert not any(("task", "no-such-task") in labels for _, labels in after)
    lat = {"service": "inference", "method": "Classify", "task": "ec"}
    assert value(after, "mtserve_rpc_seconds_count", **lat) - value(before, "mtserve_rpc_seconds_count", **lat) == 3
    served = {"task": "ec", "checkpoint": "tiny-llama", "label": answers[0].prediction.label}
    assert value(after, "mtserve_labels_served_total", **served) - value(before, "mtserve_labels_served_total", **served) >= 1
    assert value(after, "mtserve_batch_requests_count", checkpoint="tiny-llama") > value(before, "mtserve_batch_requests_count", checkpoint="tiny-llama")
    assert value(after, "mtserve_model_load_seconds", checkpoint="tiny-llama") > 0
    assert value(after, "mtserve_model_bytes", checkpoint="tiny-llama") > 0
    assert value(after, "process_resident_memory_bytes") > 0

    registry_url = f"https://localhost:{stack.registry.metrics_server.port}/metrics"
    registry = scrape(registry_url, home, token)
    assert value(registry, "mtserve_rpc_in_flight", service="registry") >= 1  # the inference service's open Watch


def test_the_endpoint_needs_an_operator_token(metered, session_home, tmp_path):
    stack = metered
    home = load_settings().home
    url = f"https://localhost:{stack.inference.metrics_server.port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(url, home, None)
    assert refused.value.code == 401
    client_token = TokenStore(session_home).create(f"metrics-client-{tmp_path.name}"[:60], Role.CLIENT)
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(url, home, client_token)
    assert refused.value.code == 403
    operator = TokenStore(session_home).create(f"metrics-operator-{tmp_path.name}"[:60], Role.OPERATOR)
    assert scrape(url, home, operator)
