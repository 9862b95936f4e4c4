"""Start-up, overload and shutdown of the inference service. Gates (events
the test opens) hold model loading or the forward pass, so each state is
reached deterministically: no sleeps, no timing assumptions."""

from __future__ import annotations

import threading
from dataclasses import replace

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.models import load_checkpoint
from mtserve_api import convert
from mtserve_api.client import connect
from mtserve_api.v1 import inference_pb2 as ipb
from mtserve_api.v1 import inference_pb2_grpc as ipb_grpc

from .conftest import make_settings, sample, start_stack, wait_for

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class GatedModel(torch.nn.Module):
    """The real model behind a gate: while `closed`, each forward pass waits
    for `gate` (and says so through `entered`)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.closed = False
        self.gate, self.entered = threading.Event(), threading.Event()

    def forward(self, **kw):
        if self.closed:
            self.entered.set()
            self.gate.wait()
        return self.inner(**kw)


class GatedLoader:
    """Loads checkpoints for real, after `allow` is set, wrapping each model in a GatedModel."""

    def __init__(self):
        self.allow, self.loading = threading.Event(), threading.Event()
        self.models: dict[str, GatedModel] = {}

    def __call__(self, record):
        self.loading.set()
        self.allow.wait()
        loaded = load_checkpoint(record.path, device="cpu", dtype="float32")
        self.models[record.id] = GatedModel(loaded.model)
        return replace(loaded, model=self.models[record.id])


def health(address: str, service: str = "mtserve.v1.Inference") -> int:
    with connect(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.fixture
def gated(tmp_path, hotel, tiny_llama_dir):
    settings = make_settings(tmp_path, **{"inference.queue_size": 1, "inference.max_wait_ms": 0})
    stack = start_stack(settings, hotel, [tiny_llama_dir], inference=False)
    loader = GatedLoader()
    stack.start_inference(loader=loader)
    yield stack, loader
    loader.allow.set()
    for model in loader.models.values():
        model.gate.set()
    stack.stop()


def classify_in_thread(stub, task="ec", name="email", **kw):
    out: dict = {}

    def run() -> None:
        try:
            out["response"] = stub.Classify(ipb.ClassifyRequest(task=task, input=convert.input_to_pb(sample(name))), timeout=60, **kw)
        except grpc.RpcError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_health_is_not_serving_until_the_routed_models_are_loaded(gated):
    stack, loader = gated
    assert loader.loading.wait(30)  # the watcher got the snapshot and is loading tiny-llama
    assert health(stack.inference_address) == NOT_SERVING
    assert health(stack.inference_address, "") == NOT_SERVING
    with connect(stack.inference_address) as channel:
        stub = ipb_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(ipb.ClassifyRequest(task="ec", input=convert.input_to_pb(sample("email"))), timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no task definitions yet" in info.value.details()
        loader.allow.set()
        wait_for(lambda: health(stack.inference_address) == SERVING, "health SERVING once loaded")
        assert stub.Classify(ipb.ClassifyRequest(task="ec", input=convert.input_to_pb(sample("email"))), timeout=30).prediction.label


def test_a_full_queue_answers_resource_exhausted(gated):
    stack, loader = gated
    loader.allow.set()
    wait_for(lambda: health(stack.inference_address) == SERVING, "models loaded")
    model = loader.models["tiny-llama"]
    model.closed = True
    with connect(stack.inference_address) as channel:
        stub = ipb_grpc.InferenceStub(channel)
        running, running_out = classify_in_thread(stub)
        assert model.entered.wait(30)  # in the forward pass: the queue is empty again
        queued, queued_out = classify_in_thread(stub)
        core = stack.inference.core
        wait_for(lambda: core.serving.models["tiny-llama"].batcher.depth == 1, "the second call to queue")
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(ipb.ClassifyRequest(task="ec", input=convert.input_to_pb(sample("email"))), timeout=30)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == (
            "the batch queue of checkpoint 'tiny-llama' is full (1 requests waiting, inference.queue_size=1); retry with backoff"
        )
        model.gate.set()
        running.join()
        queued.join()
        assert running_out["response"].prediction.label and queued_out["response"].prediction.label


def test_a_call_past_its_deadline_is_dropped_before_compute(gated):
    stack, loader = gated
    loader.allow.set()
    wait_for(lambda: health(stack.inference_address) == SERVING, "models loaded")
    model = loader.models["tiny-llama"]
    model.closed = True
    batcher = stack.inference.core.serving.models["tiny-llama"].batcher
    with connect(stack.inference_address) as channel:
        stub = ipb_grpc.InferenceStub(channel)
        running, running_out = classify_in_thread(stub)
        assert model.entered.wait(30)
        with pytest.raises(grpc.RpcError) as info:  # queued behind the gate until its deadline passes
            stub.Classify(ipb.ClassifyRequest(task="ec", input=convert.input_to_pb(sample("email"))), timeout=0.5)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: stack.inference.interceptor.inflight == 1, "the expired call to leave")
        batches = batcher.batches
        model.gate.set()
        running.join()
        assert running_out["response"].prediction.label
        wait_for(lambda: batcher.depth == 0, "the queue to drain")
        assert batcher.batches == batches + 1  # only the running call's batch: the expired one never ran


def test_graceful_shutdown(gated):
    stack, loader = gated
    loader.allow.set()
    wait_for(lambda: health(stack.inference_address) == SERVING, "models loaded")
    model = loader.models["tiny-llama"]
    model.closed = True
    address = stack.inference_address
    channel = connect(address)
    stub = ipb_grpc.InferenceStub(channel)
    in_flight, in_flight_out = classify_in_thread(stub)
    assert model.entered.wait(30)
    stopper = threading.Thread(target=stack.inference.stop, kwargs={"grace": 60})
    stopper.start()
    wait_for(stack.inference.interceptor.draining.is_set, "draining to begin")
    assert health(address) == NOT_SERVING  # health still answers while draining
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(ipb.ClassifyRequest(task="ec", input=convert.input_to_pb(sample("email"))), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "the inference service is shutting down; retry on another replica"
    assert stopper.is_alive()  # waiting for the call in flight
    model.gate.set()
    in_flight.join()
    stopper.join()
    assert in_flight_out["response"].prediction.label  # the call in flight finished normally
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(ipb.ClassifyRequest(task="ec", input=convert.input_to_pb(sample("email"))), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # nobody listens any more
    channel.close()


@pytest.fixture
def admitting(tmp_path, hotel, tiny_llama_dir):
    """Admission of 3 calls, 8 worker threads, a batch queue that never fills."""
    settings = make_settings(tmp_path, **{
        "inference.max_inflight_calls": 3, "inference.max_workers": 8, "inference.queue_size": 64, "inference.max_wait_ms": 0,
    })
    stack = start_stack(settings, hotel, [tiny_llama_dir], inference=False)
    loader = GatedLoader()
    loader.allow.set()
    stack.start_inference(loader=loader)
    yield stack, loader
    for model in loader.models.values():
        model.gate.set()
    stack.stop()


def test_a_flood_beyond_admission_is_refused_before_any_admitted_call_completes(admitting):
    stack, loader = admitting
    wait_for(lambda: health(stack.inference_address) == SERVING, "models loaded")
    model = loader.models["tiny-llama"]
    model.closed = True  # every forward pass waits for the gate: no admitted call can complete
    flood = 20
    with connect(stack.inference_address) as channel:
        stub = ipb_grpc.InferenceStub(channel)
        calls = [classify_in_thread(stub) for _ in range(flood)]
        refused = lambda: [out for _, out in calls if "error" in out]
        wait_for(lambda: len(refused()) >= flood - 3, "every call beyond the admission bound to be refused")
        assert not any("response" in out for _, out in calls)  # the gate is still closed
        assert {out["error"].code() for out in refused()} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert len(refused()) == flood - 3
        # Threads above the bound keep health answering during the flood.
        assert health(stack.inference_address) == SERVING
        model.gate.set()
        for thread, _ in calls:
            thread.join()
    answered = [out for _, out in calls if "response" in out]
    assert len(answered) == 3 and all(out["response"].prediction.label for out in answered)
    details = {out["error"].details() for _, out in calls if "error" in out}
    # Refused by admission (the core) or, beyond the 8 threads, by gRPC itself: never queued.
    assert details <= {
        "the inference service has 3 calls waiting for the model, its limit (inference.max_inflight_calls); retry with backoff",
        "Concurrent RPC limit exceeded!",
    }, details


def test_a_rolling_restart_under_load_drops_no_call(tmp_path, hotel, tiny_llama_dir):
    """Two replicas behind one client target; replica A gets SIGTERM's
    shutdown (drain: NOT_SERVING, in-flight calls finish, new calls
    UNAVAILABLE) while four clients call steadily. The client's documented
    retry policy (UNAVAILABLE, round robin) sends A's refusals to B: every
    call succeeds, and both replicas answered some."""
    from mtserve_api.inference import InferenceClient
    from services.inference.server import create_server

    stack = start_stack(make_settings(tmp_path), hotel, [tiny_llama_dir])
    # A target of two addresses carries no host name to verify: the client names the certificate's.
    client_settings = make_settings(tmp_path, **{"tls.server_name": "localhost"})
    b, b_port = create_server("127.0.0.1:0", stack.settings, registry_address=stack.registry_address)
    b.start()
    a = stack.inference
    a_port = stack.inference_address.rsplit(":", 1)[1]
    try:
        wait_for(lambda: health(f"127.0.0.1:{b_port}") == SERVING, "replica B to serve")
        target = f"ipv4:127.0.0.1:{a_port},127.0.0.1:{b_port}"
        served = {"a": 0, "b": 0}
        errors: list[BaseException] = []
        stop = threading.Event()
        done = [0]
        lock = threading.Lock()

        def steady() -> None:
            with InferenceClient(target, timeout=30, settings=client_settings) as client:
                while not stop.is_set():
                    try:
                        client.classify("ec", sample("email"))
                    except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                        errors.append(exc)
                    with lock:
                        done[0] += 1

        callers = [threading.Thread(target=steady) for _ in range(4)]
        for t in callers:
            t.start()
        wait_for(lambda: done[0] >= 40, "calls before the restart")
        # Both replicas answering: the clients' channels are connected to both (round robin), as in a
        # deployment at steady state, before one goes away.
        wait_for(lambda: b.core.serving is not None and b.core.serving.models["tiny-llama"].batcher.batches >= 8, "replica B to take calls")
        served["a"] = a.core.serving.models["tiny-llama"].batcher.batches
        a.stop(grace=10)  # what `mtserve serve` does on SIGTERM
        before = done[0]
        wait_for(lambda: done[0] >= before + 40, "calls after replica A stopped")
        stop.set()
        for t in callers:
            t.join()
        served["b"] = b.core.serving.models["tiny-llama"].batcher.batches
        assert errors == []
        assert served["a"] > 0 and served["b"] > 0, served
    finally:
        stop.set()
        b.stop(grace=2)
        stack.inference = None
        stack.stop()
