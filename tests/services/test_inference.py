"""End to end over real sockets: registry and inference in-process on port 0,
the hotel catalogue applied, tasks routed to a tiny checkpoint, classified
over gRPC by a client that always sets a deadline."""

from __future__ import annotations

import json
import math

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.tasks import Channel, Taxonomy
from mtserve_api.client import connect
from mtserve_cli import main

from .conftest import SAMPLES, classification_input, sample


def check_answer(task, answer):
    p = answer.prediction
    assert p.task == task.name and p.task_version == 1 and answer.checkpoint_id == "tiny-llama"
    assert p.prompt_tokens > 0 and answer.timing.compute_ms > 0 and answer.timing.queue_ms >= 0
    assert [s.label for s in p.scores] == list(task.label_names)
    assert all(0.0 <= s.probability <= 1.0 for s in p.scores)
    if task.taxonomy is Taxonomy.MULTILABEL:
        assert p.labels == tuple(s.label for s in p.scores if s.probability >= task.threshold)
    else:
        assert math.isclose(sum(s.probability for s in p.scores), 1.0, abs_tol=1e-9)
        assert p.label == max(p.scores, key=lambda s: s.probability).label and p.labels == (p.label,)
    if task.taxonomy is Taxonomy.ORDINAL:
        assert p.expected_value == pytest.approx(sum(s.probability * label.value for s, label in zip(p.scores, task.labels)))
    else:
        assert p.expected_value is None


def test_every_classification_task_answers_over_grpc(served, hotel):
    client = served.inference_client(timeout=30)
    for task in hotel.tasks:
        if not task.is_generation:
            check_answer(task, client.classify(task.name, classification_input(task)))


@pytest.mark.parametrize("name, channel", [("call-cancelled", Channel.CALL), ("im-invoice", Channel.IM), ("email", Channel.EMAIL), ("review", Channel.REVIEW)])
def test_classify_many_returns_exactly_the_tasks_of_the_inputs_channel(served, hotel, name, channel):
    client = served.inference_client(timeout=30)
    inp = sample(name)
    answers, skipped = client.classify_many(inp)
    expected = sorted(t.name for t in hotel.tasks if not t.is_generation and t.input_kind is inp.kind and channel in t.channels)
    assert [a.prediction.task for a in answers] == expected and skipped == []
    # one shared batch per input: every answer came out of the same forward passes
    assert len({a.timing.compute_ms for a in answers}) == 1
    for answer in answers:
        task = hotel.task(answer.prediction.task)
        check_answer(task, answer)
        alone = client.classify(task.name, inp).prediction
        assert [s.probability for s in alone.scores] == pytest.approx([s.probability for s in answer.prediction.scores], abs=1e-5)


def test_named_tasks_include_generation_and_keep_their_order(served):
    client = served.inference_client(timeout=60)
    answers, _ = client.classify_many(sample("im-invoice"), ["see", "cs", "idm"])
    assert [a.prediction.task for a in answers] == ["see", "cs", "idm"]
    assert isinstance(answers[1].prediction.text, str) and answers[1].prediction.scores == ()


def test_generate(served, hotel):
    answer = served.inference_client(timeout=60).generate("cs", sample("call-cancelled"))
    p = answer.prediction
    assert p.task == "cs" and isinstance(p.text, str) and p.label is None and answer.checkpoint_id == "tiny-llama"
    assert len(served.inference.core.serving.models["tiny-llama"].loaded.tokenizer(p.text)["input_ids"]) <= hotel.task("cs").max_new_tokens + 2


def test_model_info(served, hotel):
    info = served.inference_client(timeout=10).model_info()
    assert [c.id for c in info.checkpoints] == ["tiny-llama"]  # tiny-qwen is registered, but no route names it
    assert info.checkpoints[0].loaded and sorted(info.checkpoints[0].tasks) == sorted(t.name for t in hotel.tasks)
    # What the weights run in, and why (make_settings sets float32; `auto` would say what it measured).
    assert (info.checkpoints[0].dtype, info.checkpoints[0].dtype_reason) == ("float32", "dtype float32 (set)")
    assert all(t.serving for t in info.tasks) and len(info.tasks) == len(hotel.tasks)
    assert info.registry_connected and info.state_source == "registry"
    assert info.registry_revision == served.registry.store.revision()


def test_health_is_serving_and_reflection_lists_the_service(served):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with connect(served.inference_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "mtserve.v1.Inference"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        assert "mtserve.v1.Inference" in {s.name for s in responses[0].list_services_response.service}


def _run(capsys, args):
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_classify_over_the_server_prints_what_local_classify_prints(served, capsys, tiny_llama_dir):
    args = ["classify", "--input", str(SAMPLES / "call-cancelled.json"), "--json"]
    code, remote_out, err = _run(capsys, args + ["--server", served.inference_address, "--timeout", "30"])
    assert code == 0, err
    code, local_out, err = _run(capsys, args + ["--model", str(tiny_llama_dir)])
    assert code == 0, err
    remote, local = json.loads(remote_out), json.loads(local_out)
    assert [r["task"] for r in remote] == sorted(r["task"] for r in local)
    by_task = {r["task"]: r for r in local}
    for r in remote:
        want = by_task[r["task"]]
        assert r["label"] == want["label"] and r["checkpoint"] == want["checkpoint"] == "tiny-llama"
        assert r["scores"] == pytest.approx(want["scores"], abs=1e-5)
    code, out, err = _run(capsys, ["classify", "--text", "Room was clean", "--channel", "review", "--server", served.inference_address])
    assert code == 0 and "rtc" in out and "checkpoint tiny-llama" in out


def test_cli_remote_errors_are_one_line_with_exit_code_2(served, capsys):
    code, out, err = _run(capsys, ["classify", "--task", "nope", "--text", "hi", "--server", served.inference_address])
    assert code == 2 and out == ""
    assert err == f"error: inference at {served.inference_address}: NOT_FOUND: unknown task 'nope'\n"
