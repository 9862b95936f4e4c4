"""Bad requests over the wire: each gets its exact status code and a message
naming the problem (field, rule, value)."""

from __future__ import annotations

import shutil

import grpc
import pytest

from mtserve.checkpoints import write_manifest
from mtserve.records import RouteChange
from mtserve.tasks import parse_task
from mtserve_api import convert
from mtserve_api.client import connect
from mtserve_api.v1 import common_pb2 as cpb
from mtserve_api.v1 import inference_pb2 as ipb
from mtserve_api.v1 import inference_pb2_grpc as ipb_grpc

from .conftest import make_settings, sample, start_stack, wait_for

MAX_MESSAGE = 256 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory, hotel, tiny_llama_dir):
    stack = start_stack(make_settings(tmp_path_factory.mktemp("errors"), **{"inference.max_message_bytes": MAX_MESSAGE}), hotel, [tiny_llama_dir])
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def stub(stack):
    # A raw stub without the client's retry config: what any caller sees.
    with connect(stack.inference_address) as channel:
        yield ipb_grpc.InferenceStub(channel)


def fails(call, request, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    assert info.value.code() is code, info.value.details()
    return info.value.details()


def text(value: str, channel: int = 3) -> cpb.Input:
    return cpb.Input(text=cpb.Text(text=value, channel=channel))


CALL = convert.input_to_pb(sample("call-cancelled"))


def test_unknown_task(stub):
    assert fails(stub.Classify, ipb.ClassifyRequest(task="nope", input=CALL), grpc.StatusCode.NOT_FOUND) == "unknown task 'nope'"
    assert fails(stub.ClassifyMany, ipb.ClassifyManyRequest(tasks=["rc-a", "nope"], input=CALL), grpc.StatusCode.NOT_FOUND) == "unknown task 'nope'"
    assert fails(stub.Classify, ipb.ClassifyRequest(task="No Such", input=CALL), grpc.StatusCode.INVALID_ARGUMENT) == (
        "task: must match ^[a-z][a-z0-9_-]{1,63}$ (got 'No Such')"
    )


def test_empty_or_missing_input(stub):
    assert fails(stub.Classify, ipb.ClassifyRequest(task="ec", input=text("   ")), grpc.StatusCode.INVALID_ARGUMENT) == (
        "input.text.text: must not be empty (got '   ')"
    )
    assert fails(stub.Classify, ipb.ClassifyRequest(task="ec"), grpc.StatusCode.INVALID_ARGUMENT) == (
        "input: must hold one of text, text_pair or conversation"
    )
    empty_turns = cpb.Input(conversation=cpb.Conversation(channel=1))
    assert fails(stub.ClassifyMany, ipb.ClassifyManyRequest(input=empty_turns), grpc.StatusCode.INVALID_ARGUMENT) == (
        "input.conversation.turns: a conversation needs at least one turn (got 0)"
    )


def test_wrong_input_kind_or_channel_for_the_task(stub):
    assert fails(stub.Classify, ipb.ClassifyRequest(task="rc-a", input=text("my booking was cancelled")), grpc.StatusCode.INVALID_ARGUMENT) == (
        "input: task 'rc-a' reads conversation input (got 'text')"
    )
    im = convert.input_to_pb(sample("im-invoice"))
    assert fails(stub.Classify, ipb.ClassifyRequest(task="rc-a", input=im), grpc.StatusCode.INVALID_ARGUMENT) == (
        "input.channel: task 'rc-a' applies to channels ['call'] (got 'im')"
    )
    assert fails(stub.ClassifyMany, ipb.ClassifyManyRequest(tasks=["rc-i", "ec"], input=im), grpc.StatusCode.INVALID_ARGUMENT) == (
        "input (for tasks[1] 'ec'): task 'ec' reads text input (got 'conversation')"
    )


def test_generation_and_classification_calls_are_not_interchangeable(stub):
    assert fails(stub.Classify, ipb.ClassifyRequest(task="cs", input=CALL), grpc.StatusCode.INVALID_ARGUMENT) == (
        "task: task 'cs' is a generation task; call Generate (got 'cs')"
    )
    assert fails(stub.Generate, ipb.GenerateRequest(task="rc-a", input=CALL), grpc.StatusCode.INVALID_ARGUMENT) == (
        "task: task 'rc-a' is a binary task, not a generation task; call Classify (got 'rc-a')"
    )
    assert fails(stub.ClassifyMany, ipb.ClassifyManyRequest(tasks=["rc-a", "id", "rc-a"], input=CALL), grpc.StatusCode.INVALID_ARGUMENT) == (
        "tasks[2]: names a task twice (also tasks[0]) (got 'rc-a')"
    )


def test_oversize_message(stub):
    request = ipb.ClassifyRequest(task="ec", input=text("room " * (MAX_MESSAGE // 5 + 100)))
    details = fails(stub.Classify, request, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "larger than max" in details and str(MAX_MESSAGE) in details


def test_text_over_its_token_budget(stub):
    long_email = "Please change my booking from Friday to Saturday, and confirm the new dates. " * 80
    details = fails(stub.Classify, ipb.ClassifyRequest(task="ec", input=text(long_email), no_truncate=True), grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("input: has ") and "tokens, over the 1024-token budget for text/email input, and truncation is off" in details
    # the same text is cut to its budget when truncation is on
    answer = stub.Classify(ipb.ClassifyRequest(task="ec", input=text(long_email)), timeout=30).prediction
    assert answer.truncated and answer.label


def test_no_route_unloadable_checkpoint_and_retired_task(stack, stub, tiny_llama_dir, tmp_path_factory):
    registry = stack.registry_client()
    fresh = parse_task({"name": "fresh", "instruction": "Is this review positive? Answer yes or no.", "input_kind": "text",
                        "taxonomy": "binary", "channels": ["review"], "labels": ["yes", "no"]})
    registry.register_task(fresh)
    stack.wait_synced()
    review = convert.input_to_pb(sample("review"))
    assert fails(stub.Classify, ipb.ClassifyRequest(task="fresh", input=review), grpc.StatusCode.FAILED_PRECONDITION) == (
        "task 'fresh' has no route yet: set one with `mtserve routes set fresh CHECKPOINT` or promote a trained checkpoint"
    )
    # applicable but unrouted tasks are reported, not failed, when no task is named
    many = stub.ClassifyMany(ipb.ClassifyManyRequest(input=review), timeout=30)
    assert [p.task for p in many.predictions] == ["rtc"] and [s.task for s in many.skipped] == ["fresh"]

    # a registered checkpoint whose files are damaged afterwards cannot be loaded
    broken = tmp_path_factory.mktemp("broken") / "broken-ckpt"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "manifest.json").unlink()
    write_manifest(broken, id="broken-ckpt")
    registry.register_checkpoint(str(broken))
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    _, revision = registry.set_routes([RouteChange("fresh", "broken-ckpt")])
    stack.wait_synced(revision)
    details = fails(stub.Classify, ipb.ClassifyRequest(task="fresh", input=review), grpc.StatusCode.FAILED_PRECONDITION)
    assert details.startswith("task 'fresh' is routed to checkpoint 'broken-ckpt', which could not be loaded: IntegrityError: ")
    assert "model.safetensors has sha256" in details
    info = stub.ModelInfo(ipb.ModelInfoRequest(), timeout=10)
    broken_info = next(c for c in info.checkpoints if c.id == "broken-ckpt")
    assert not broken_info.loaded and "model.safetensors" in broken_info.error
    assert stub.Classify(ipb.ClassifyRequest(task="rtc", input=review), timeout=30).prediction.checkpoint_id == "tiny-llama"  # the rest serves on

    # ... and one stripped of its manifest, with a file added, is not loaded unverified
    stripped = tmp_path_factory.mktemp("stripped") / "stripped-ckpt"
    shutil.copytree(tiny_llama_dir, stripped)
    (stripped / "manifest.json").unlink()
    write_manifest(stripped, id="stripped-ckpt")
    registry.register_checkpoint(str(stripped))
    (stripped / "manifest.json").unlink()
    (stripped / "extra.safetensors").write_bytes(b"not listed anywhere")
    _, revision = registry.set_routes([RouteChange("fresh", "stripped-ckpt")])
    stack.wait_synced(revision)
    assert fails(stub.Classify, ipb.ClassifyRequest(task="fresh", input=review), grpc.StatusCode.FAILED_PRECONDITION) == (
        "task 'fresh' is routed to checkpoint 'stripped-ckpt', which could not be loaded: IntegrityError: "
        "checkpoint 'stripped-ckpt': its manifest.json is missing; it cannot be verified, so it is not served"
    )

    registry.retire_task("hs")
    stack.wait_synced()
    assert fails(stub.Classify, ipb.ClassifyRequest(task="hs", input=CALL), grpc.StatusCode.FAILED_PRECONDITION) == (
        "task 'hs' is retired and not served; register it again to serve it"
    )
    many = stub.ClassifyMany(ipb.ClassifyManyRequest(input=CALL), timeout=30)
    assert "hs" not in [p.task for p in many.predictions]


def test_deadline_is_reported_by_the_client_as_a_domain_error(stack):
    from mtserve.errors import UnavailableError

    client = stack.inference_client(timeout=30)
    with pytest.raises(UnavailableError, match="DEADLINE_EXCEEDED: no answer within the deadline"):
        client.classify("rc-a", sample("call-cancelled"), timeout=1e-6)
    wait_for(lambda: stack.inference.interceptor.inflight == 0, "the abandoned call to finish")
