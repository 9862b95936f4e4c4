"""The inference service follows the registry without restarts: new tasks,
route changes to another checkpoint, rollbacks, new versions and a new
truncation policy take effect live; a registry outage (even at start-up)
does not stop serving, thanks to the last-known-good copy."""

from __future__ import annotations

import dataclasses

import pytest

from mtserve.errors import ValidationError
from mtserve.inputs import Text
from mtserve.records import RouteChange
from mtserve.tasks import Catalogue, Channel, InputKind, TruncationBudget, TruncationPolicy, parse_task
from services.inference.state import load_state

from .conftest import make_settings, sample, start_registry, start_stack, wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory, hotel, tiny_llama_dir, tiny_qwen_dir):
    stack = start_stack(make_settings(tmp_path_factory.mktemp("watch")), hotel, [tiny_llama_dir, tiny_qwen_dir], route_to="tiny-llama")
    yield stack
    stack.stop()


def probabilities(answer):
    return [s.probability for s in answer.prediction.scores]


def test_a_task_registered_after_start_is_served_without_restart(stack):
    registry, inference = stack.registry_client(), stack.inference_client(timeout=30)
    late = parse_task({"name": "late-task", "instruction": "Does the guest mention breakfast? Answer yes or no.", "input_kind": "text",
                       "taxonomy": "binary", "channels": ["review"], "labels": ["yes", "no"]})
    registry.register_task(late)
    update = registry.set_route("late-task", "tiny-llama", reason="manual")
    stack.wait_synced(registry.get_routes()[1])
    answer = inference.classify("late-task", sample("review"))
    assert answer.prediction.task_version == 1 and answer.checkpoint_id == "tiny-llama" and update.changed
    answers, _ = inference.classify_many(sample("review"))
    assert "late-task" in [a.prediction.task for a in answers]


def test_a_task_moved_to_another_checkpoint_is_answered_by_it_and_rollback_moves_it_back(stack):
    registry, inference = stack.registry_client(), stack.inference_client(timeout=30)
    email = sample("email")
    before = inference.classify("ec", email)
    assert before.checkpoint_id == "tiny-llama"
    _, revision = registry.set_routes([RouteChange("ec", "tiny-qwen")], reason="promote ec")
    stack.wait_synced(revision)
    moved = inference.classify("ec", email)
    assert moved.checkpoint_id == "tiny-qwen"
    assert probabilities(moved) != pytest.approx(probabilities(before), abs=1e-5)  # really another model
    info = inference.model_info()
    assert {c.id: c.tasks for c in info.checkpoints}["tiny-qwen"] == ("ec",)
    # a conversation scored on tasks living on two checkpoints: one job per checkpoint
    answers, _ = inference.classify_many(email)
    assert [(a.prediction.task, a.checkpoint_id) for a in answers] == [("ec", "tiny-qwen")]

    registry.rollback("ec")
    stack.wait_synced()
    back = inference.classify("ec", email)
    assert back.checkpoint_id == "tiny-llama"
    assert probabilities(back) == pytest.approx(probabilities(before), abs=1e-5)
    # no route names tiny-qwen any more: it is unloaded
    assert [c.id for c in inference.model_info().checkpoints] == ["tiny-llama"]


def test_a_new_version_is_served_once_routed(stack, hotel):
    registry, inference = stack.registry_client(), stack.inference_client(timeout=30)
    changed = dataclasses.replace(hotel.task("rtc"), instruction="Which of these topics does the review mention?")
    assert registry.register_task(changed).record.version == 2
    stack.wait_synced()
    assert inference.classify("rtc", sample("review")).prediction.task_version == 1  # the route still names v1
    registry.set_route("rtc", "tiny-llama", task_version=2)
    stack.wait_synced()
    assert inference.classify("rtc", sample("review")).prediction.task_version == 2


def test_a_new_truncation_policy_reaches_the_engines(stack, hotel):
    registry, inference = stack.registry_client(), stack.inference_client(timeout=30)
    text = Text("Please move my booking to next Friday and send the new confirmation to my assistant. " * 4, Channel.EMAIL)
    assert not inference.classify("ec", text, truncate=False).prediction.truncated
    tight = Catalogue("hotel", hotel.tasks, TruncationPolicy((TruncationBudget(InputKind.TEXT, None, 32),)))
    _, revision = registry.apply_catalogue(tight)
    stack.wait_synced(revision)
    with pytest.raises(ValidationError, match=r"over the 32-token budget for text/email input, and truncation is off"):
        inference.classify("ec", text, truncate=False)
    assert inference.classify("ec", text).prediction.truncated
    _, revision = registry.apply_catalogue(hotel)
    stack.wait_synced(revision)
    assert not inference.classify("ec", text, truncate=False).prediction.truncated


def test_registry_outage_keeps_serving_and_recovers(stack, tmp_path):
    """Stop the registry: the replica keeps serving; a second replica starts
    from the last-known-good copy alone; the registry comes back on the same
    address and changes flow again."""
    inference = stack.inference_client(timeout=30)
    email = sample("email")
    before = inference.classify("ec", email)
    saved = load_state(stack.settings.inference_state_file)
    assert saved is not None and saved.revision == stack.inference.core.serving.state.revision

    address = stack.registry_address
    stack.registry.stop(grace=1)
    core = stack.inference.core
    wait_for(lambda: not core.registry_connected, "the watcher to notice the outage")
    during = inference.classify("ec", email)
    assert probabilities(during) == pytest.approx(probabilities(before), abs=1e-5)
    assert not inference.model_info().registry_connected

    # a second replica, started while the registry is down, serves the saved state
    from services.inference.server import create_server

    settings = make_settings(tmp_path, **{"inference.state_file": str(stack.settings.inference_state_file)})
    second, port = create_server("127.0.0.1:0", settings, registry_address=address)
    second.start()
    try:
        wait_for(second.core.ready.is_set, "the second replica to load the last-known-good state")
        from mtserve_api.inference import InferenceClient

        with InferenceClient(f"127.0.0.1:{port}", timeout=30) as other:
            info = other.model_info()
            assert info.state_source == "last-known-good" and not info.registry_connected
            assert probabilities(other.classify("ec", email)) == pytest.approx(probabilities(before), abs=1e-5)
    finally:
        second.stop(grace=1)

    # the registry comes back on the same address and database
    connects = stack.inference.watcher.connects
    stack.registry, _ = start_registry(stack.settings, address=address)
    wait_for(lambda: stack.inference.watcher.connects > connects, "the watcher to reconnect")
    registry = stack.registry_client()
    _, revision = registry.set_routes([RouteChange("ec", "tiny-qwen")], reason="after the outage")
    stack.wait_synced(revision)
    assert inference.classify("ec", email).checkpoint_id == "tiny-qwen"
    assert inference.model_info().registry_connected and inference.model_info().state_source == "registry"
    registry.rollback("ec")
    stack.wait_synced()


def test_watchers_see_routes_set_through_another_registry_replica(stack, hotel):
    """Two registry processes on one database: a change committed through
    one reaches a watcher of the other by the revision poll."""
    from mtserve_api.registry import RegistryClient

    other, other_address = start_registry(stack.settings)
    try:
        with RegistryClient(other_address, timeout=20) as client:
            _, revision = client.set_routes([RouteChange("see", "tiny-qwen")], reason="through the other replica")
        stack.wait_synced(revision)
        answer = stack.inference_client(timeout=30).classify("see", sample("call-cancelled"))
        assert answer.checkpoint_id == "tiny-qwen"
    finally:
        other.stop(grace=1)
    stack.registry_client().rollback("see")
    stack.wait_synced()
