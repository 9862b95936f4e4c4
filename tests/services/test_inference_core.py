"""The inference core without gRPC: applying registry states, resolving
tasks, and the last-known-good file."""

from __future__ import annotations

import json

import pytest

from mtserve.errors import NotFoundError, PreconditionError
from mtserve.models import load_checkpoint
from mtserve.records import CheckpointRecord, PolicyRecord, RegistryState, Route, TaskRecord, TaskStatus
from mtserve.tasks import TruncationPolicy
from services.inference.core import InferenceCore
from services.inference.state import load_state, save_state

from .conftest import sample


def state_for(hotel, routes, checkpoints, revision=1, retired=()):
    tasks = tuple(TaskRecord(t.with_version(1), TaskStatus.RETIRED if t.name in retired else TaskStatus.ACTIVE, 1, "t") for t in hotel.tasks)
    return RegistryState(revision, tasks, tuple(routes), tuple(checkpoints), PolicyRecord(hotel.truncation, "hotel"))


def record(folder, cid):
    from mtserve.checkpoints import manifest_sha256

    return CheckpointRecord(cid, str(folder), "full", (folder / "manifest.json").read_text(), manifest_sha256(folder), "t")


class CountingLoader:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def __call__(self, rec):
        self.calls.append(rec.id)
        if self.fail:
            raise OSError(f"disk on fire under {rec.path}")
        return load_checkpoint(rec.path, device="cpu", dtype="float32")


def test_models_load_once_and_unload_when_no_route_names_them(hotel, tiny_llama_dir, tiny_qwen_dir):
    loader = CountingLoader()
    core = InferenceCore(device="cpu", dtype="float32", loader=loader)
    cps = [record(tiny_llama_dir, "tiny-llama"), record(tiny_qwen_dir, "tiny-qwen")]
    core.apply(state_for(hotel, [Route("ec", 1, "tiny-llama"), Route("rtc", 1, "tiny-llama")], cps))
    core.apply(state_for(hotel, [Route("ec", 1, "tiny-qwen"), Route("rtc", 1, "tiny-llama")], cps, revision=2))
    assert loader.calls == ["tiny-llama", "tiny-qwen"]
    assert core.classify("ec", sample("email")).checkpoint_id == "tiny-qwen"
    old_llama = core.serving.models["tiny-llama"].batcher
    core.apply(state_for(hotel, [Route("ec", 1, "tiny-qwen")], cps, revision=3))
    assert sorted(core.serving.models) == ["tiny-qwen"] and loader.calls == ["tiny-llama", "tiny-qwen"]
    with pytest.raises(Exception, match="no longer served"):
        old_llama.submit([])
    with pytest.raises(PreconditionError, match="task 'rtc' has no route yet"):
        core.classify("rtc", sample("review"))
    with pytest.raises(NotFoundError, match="unknown task 'zzz'"):
        core.classify("zzz", sample("review"))
    # retired: not served, and its checkpoint is not needed for it
    core.apply(state_for(hotel, [Route("ec", 1, "tiny-qwen")], cps, revision=4, retired=("ec",)))
    assert core.serving.models == {}
    with pytest.raises(PreconditionError, match="task 'ec' is retired"):
        core.classify("ec", sample("email"))
    core.close()


def test_a_failed_load_is_reported_and_not_retried_on_every_change(hotel, tiny_llama_dir):
    loader = CountingLoader(fail=True)
    core = InferenceCore(device="cpu", dtype="float32", loader=loader)
    cps = [record(tiny_llama_dir, "tiny-llama")]
    core.apply(state_for(hotel, [Route("ec", 1, "tiny-llama")], cps))
    core.apply(state_for(hotel, [Route("ec", 1, "tiny-llama"), Route("rtc", 1, "tiny-llama")], cps, revision=2))
    assert loader.calls == ["tiny-llama"]
    with pytest.raises(PreconditionError) as info:
        core.classify("rtc", sample("review"))
    assert str(info.value) == (
        f"task 'rtc' is routed to checkpoint 'tiny-llama', which could not be loaded: OSError: disk on fire under {tiny_llama_dir}"
    )
    info = core.info()
    assert [(c.id, c.loaded) for c in info.checkpoints] == [("tiny-llama", False)] and "disk on fire" in info.checkpoints[0].error
    assert core.ready.is_set()  # the rest of the state serves: a broken checkpoint does not hold up readiness
    # a route to an unregistered checkpoint
    core.apply(state_for(hotel, [Route("ec", 1, "ghost")], cps, revision=3))
    with pytest.raises(PreconditionError, match="checkpoint 'ghost', which could not be loaded: it is not a registered checkpoint"):
        core.classify("ec", sample("email"))
    core.close()


def test_the_default_loader_refuses_a_folder_that_is_not_what_was_registered(hotel, tiny_llama_dir, tiny_qwen_dir):
    core = InferenceCore(device="cpu", dtype="float32")
    wrong = record(tiny_qwen_dir, "tiny-llama")  # the registered manifest of tiny-qwen, under tiny-llama's name
    core.apply(state_for(hotel, [Route("ec", 1, "tiny-llama")], [wrong]))
    with pytest.raises(PreconditionError, match="the folder .* holds checkpoint 'tiny-qwen'"):
        core.classify("ec", sample("email"))
    moved = CheckpointRecord("tiny-llama", str(tiny_qwen_dir), "full", "{}", "0" * 64, "t")  # the folder's manifest changed
    core.apply(state_for(hotel, [Route("ec", 1, "tiny-llama")], [moved], revision=2))
    with pytest.raises(PreconditionError, match="manifest.json differs from the manifest registered"):
        core.classify("ec", sample("email"))
    core.close()


def test_last_known_good_round_trip_and_damage(hotel, tmp_path, tiny_llama_dir):
    state = state_for(hotel, [Route("ec", 1, "tiny-llama", "t", "why")], [record(tiny_llama_dir, "tiny-llama")], revision=42)
    path = tmp_path / "sub" / "state.json"
    save_state(path, state)
    assert load_state(path) == state
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary file left behind
    assert load_state(tmp_path / "none.json") is None
    path.write_text("{not json")
    assert load_state(path) is None
    path.write_text(json.dumps({"format": "something/else"}))
    assert load_state(path) is None
    body = {"format": "mtserve.inference-state/1", **state.to_dict()}
    body["tasks"][0]["task"]["taxonomy"] = "astrology"
    path.write_text(json.dumps(body))
    assert load_state(path) is None


def test_state_changes_apply_as_upserts(hotel):
    a = state_for(hotel, [Route("ec", 1, "x")], [], revision=1)
    b = state_for(hotel, [Route("ec", 1, "y"), Route("rtc", 1, "x")], [], revision=2, retired=("hs",))
    b = RegistryState(b.revision, b.tasks, b.routes, b.checkpoints, PolicyRecord(TruncationPolicy(), "other"))
    change = b.changes_since(a)
    assert {r.name for r in change.tasks} == {"hs"} and len(change.routes) == 2 and change.policy.source == "other"
    merged = a.apply(change)
    assert merged.task_versions() == b.task_versions() and merged.route_table() == b.route_table()
    assert (merged.revision, merged.policy) == (2, b.policy)
    assert b.changes_since(b) is None
