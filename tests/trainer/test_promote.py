"""Promotion at the end of a job (trainer/promote.py): the plan's rules one by
one on hand-made results, then a real trained job promoted in a real
registry store (SQLite), where a task whose definition changed since
training is not promoted, and moves once the trained definition is the
registry's current one again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mtserve.errors import PreconditionError
from mtserve.records import CheckpointRecord, Route, RouteChange, TaskRecord, TaskStatus
from mtserve.tasks import load_catalogue
from services.registry.store import RegistryStore
from trainer.evaluate import Trivial
from trainer.job import load_job
from trainer.pipeline import run_job
from trainer.promote import (
    ALREADY,
    MOVED,
    STAYED,
    RegisteredCheckpoint,
    RoutePlace,
    check_registry,
    plan,
    qualification_of,
    register_and_promote,
)
from trainer.results import JobResult, TaskRow
from trainer.toy import write_promotion_job


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def promo_catalogue(tmp_path_factory):
    folder = tmp_path_factory.mktemp("promo-cat")
    write_promotion_job(folder, "unused")
    return load_catalogue(folder / "catalogue.yaml")


def row(task, qualified=True, verdict="qualified", ratio=1.0, low=1.0, high=1.0, checkpoint="mt-a", definition_hash="", **extra):
    return TaskRow(task=task, task_version=None, definition_hash=definition_hash, trivial=Trivial("none", None, None), dev_warnings=[],
                   qualified=qualified, verdict=verdict, ratio=ratio, ratio_low=low, ratio_high=high, checkpoint=checkpoint, **extra)


def job(method, *rows):
    return JobResult(job="j", method=method, rows=list(rows), groups=[], checkpoints=[], overhead=None, num_qualified=0, runs=[], bad_lines=[],
                     seconds=0.0)


def checkpoint(cid="mt-a", tasks=()):
    return CheckpointRecord(cid, f"/x/{cid}", "full", json.dumps({"id": cid, "tasks": list(tasks)}), "0" * 64)


def records(catalogue, **changes):
    out = {}
    for task in catalogue.tasks:
        version = changes.get(task.name, {}).get("version", 1)
        status = changes.get(task.name, {}).get("status", TaskStatus.ACTIVE)
        out[task.name] = TaskRecord(task.with_version(version), status, version)
    return out


def test_qualified_tasks_move_and_the_rest_stay_with_the_reason(promo_catalogue):
    h = {t.name: t.content_hash() for t in promo_catalogue.tasks}
    result = job(
        "two_stage",
        row("polarity", definition_hash=h["polarity"]),
        row("mood", qualified=True, verdict="within noise", ratio=0.995, low=0.97, high=1.02, definition_hash=h["mood"]),
        row("stubborn", qualified=False, verdict="not qualified", ratio=0.8, low=0.7, high=0.9, definition_hash=h["stubborn"]),
    )
    routes = {"polarity": Route("polarity", 1, "old"), "stubborn": Route("stubborn", 1, "old")}
    changes, out = plan(result, records(promo_catalogue, polarity={"version": 3}), routes, {"mt-a": checkpoint()})
    assert changes == [RouteChange("polarity", "mt-a", 3), RouteChange("mood", "mt-a", 1)]
    by = {t.task: t for t in out}
    assert by["polarity"].action == MOVED and by["polarity"].route_before == RoutePlace("old", 1)
    assert by["polarity"].route_after == RoutePlace("mt-a", 3)
    assert by["polarity"].to_dict()["route_after"] == {"checkpoint_id": "mt-a", "task_version": 3}  # the JSON of events and result files
    assert by["mood"].action == MOVED and by["mood"].route_before is None
    assert "within noise" in by["mood"].reason and "ratio 0.995 (95% CI 0.970-1.020)" in by["mood"].reason
    assert by["stubborn"].action == STAYED and by["stubborn"].route_after == RoutePlace("old", 1)
    assert by["stubborn"].reason == "not qualified: ratio 0.800 (95% CI 0.700-0.900), below 0.99 of its baseline"


def test_the_registry_can_refuse_a_qualified_task(promo_catalogue):
    h = {t.name: t.content_hash() for t in promo_catalogue.tasks}
    result = job(
        "two_stage",
        row("polarity", definition_hash="f" * 64),  # trained on another definition than the registry's current one
        row("mood", definition_hash=h["mood"]),  # unknown to the registry
        row("stubborn", definition_hash=h["stubborn"]),  # retired
    )
    known = records(promo_catalogue, polarity={"version": 2}, stubborn={"status": TaskStatus.RETIRED})
    known["mood"] = None
    changes, out = plan(result, known, {}, {"mt-a": checkpoint()})
    assert changes == []
    by = {t.task: t for t in out}
    assert all(t.action == STAYED for t in out)
    assert "definition changed since training" in by["polarity"].reason and "current version 2" in by["polarity"].reason
    assert "does not know the task" in by["mood"].reason
    assert "retired" in by["stubborn"].reason


def test_single_task_jobs_missing_baselines_manifests_and_existing_routes(promo_catalogue):
    h = {t.name: t.content_hash() for t in promo_catalogue.tasks}
    known = records(promo_catalogue)
    # a single-task job's model is its own baseline
    single = job("single_task", row("mood", qualified=None, verdict=None, ratio=None, checkpoint="st-mood", definition_hash=h["mood"]))
    changes, out = plan(single, known, {}, {"st-mood": checkpoint("st-mood")})
    assert changes == [RouteChange("mood", "st-mood", 1)] and out[0].verdict == "single-task model"
    # no baseline trained: nothing to qualify against
    nobase = job("two_stage", row("mood", qualified=None, verdict=None, definition_hash=h["mood"]))
    changes, out = plan(nobase, known, {}, {"mt-a": checkpoint()})
    assert changes == [] and "no single-task baseline" in out[0].reason
    # a manifest that lists the task with another definition is not trusted
    listed = checkpoint(tasks=[{"name": "mood", "content_hash": "e" * 64}])
    changes, out = plan(job("two_stage", row("mood", definition_hash=h["mood"])), known, {}, {"mt-a": listed})
    assert changes == [] and "manifest lists another definition" in out[0].reason
    # already routed there: nothing to change
    changes, out = plan(job("two_stage", row("mood", definition_hash=h["mood"])), known, {"mood": Route("mood", 1, "mt-a")},
                        {"mt-a": checkpoint()})
    assert changes == [] and out[0].action == ALREADY


def test_an_unreachable_registry_is_refused_before_training():
    from mtserve.config import load_settings
    from mtserve.tls import ensure_local_ca
    from mtserve_api.registry import RegistryClient

    ensure_local_ca(load_settings().home)  # what a service's first start makes; alone, this test would not find one
    with RegistryClient("127.0.0.1:1", timeout=5) as client, pytest.raises(PreconditionError) as info:
        check_registry(client, "127.0.0.1:1")
    assert str(info.value).startswith("--promote: the registry at 127.0.0.1:1 is not reachable") and "Nothing was trained" in str(info.value)


# -- a real job, a real registry store ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir):
    folder = tmp_path_factory.mktemp("promo-job")
    job = write_promotion_job(folder, tiny_llama_dir)
    result = run_job(load_job(job))
    by = {r.task: r for r in result.rows}
    # the toy job's construction (trainer/toy.py): two tasks qualify, one cannot
    assert by["polarity"].qualified and by["mood"].qualified and by["stubborn"].qualified is False, result.rows
    return folder, result


def test_a_changed_task_definition_is_not_promoted(trained, tmp_path, tiny_llama_dir):
    folder, result = trained
    catalogue = load_catalogue(folder / "catalogue.yaml")
    store = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        for task in catalogue.tasks:
            store.register_task(task)
        store.register_checkpoint(str(tiny_llama_dir))
        store.set_routes([RouteChange(t.name, "tiny-llama") for t in catalogue.tasks], reason="setup")
        # someone edits polarity's instruction after the job trained on it
        polarity = catalogue.task("polarity")
        edited = store.register_task(dataclasses.replace(polarity, instruction="Positive or negative? Answer {labels}."))
        assert edited.record.version == 2

        report = register_and_promote(result, store, promote=True, address="store")
        by = {t.task: t for t in report.tasks}
        new = result.groups[0].run.checkpoint.id
        assert report.moved == ["mood"] and report.stayed == ["polarity", "stubborn"]
        assert "definition changed since training" in by["polarity"].reason and "version 2" in by["polarity"].reason
        assert by["mood"].task_version == 1 and by["mood"].route_after == RoutePlace(new, 1)
        routes = {r.task: r for r in store.get_routes()[0]}
        assert routes["polarity"].checkpoint_id == "tiny-llama" and routes["stubborn"].checkpoint_id == "tiny-llama"
        assert routes["mood"].checkpoint_id == new and routes["mood"].reason == report.reason

        # the trained definition registered again (version 3 has version 1's content): now it moves, naming version 3
        assert store.register_task(polarity).record.version == 3
        again = register_and_promote(result, store, promote=True, address="store")
        assert again.moved == ["polarity"] and [t.action for t in again.tasks] == [MOVED, ALREADY, STAYED]
        route = {r.task: r for r in store.get_routes()[0]}["polarity"]
        assert (route.checkpoint_id, route.task_version) == (new, 3)
    finally:
        store.close()


def test_register_only_leaves_routes_alone(trained, tmp_path, tiny_llama_dir):
    _, result = trained
    store = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        report = register_and_promote(result, store, promote=False, address="store")
        assert report.registered == [RegisteredCheckpoint(result.groups[0].run.checkpoint.id, str(Path(result.checkpoints[0]).resolve()), True)]
        assert report.tasks == [] and store.get_routes()[0] == []
        assert store.get_checkpoint(report.registered[0].id).path == report.registered[0].path
    finally:
        store.close()


def test_the_reason_names_a_degenerate_baseline():
    degenerate = row("t", verdict="qualified against a degenerate baseline", degenerate_baseline=True)
    qualified, verdict, why = qualification_of("two_stage", degenerate)
    assert qualified is True and verdict == "qualified against a degenerate baseline"
    assert why == ("qualified: ratio 1.000 (95% CI 1.000-1.000), at or above 0.99 of its baseline; "
                   "against a degenerate baseline (it does not beat its trivial baseline)")
    qualified, _, why = qualification_of("two_stage", dataclasses.replace(degenerate, degenerate_baseline=False, verdict="qualified"))
    assert why == "qualified: ratio 1.000 (95% CI 1.000-1.000), at or above 0.99 of its baseline"
    noisy = dataclasses.replace(degenerate, verdict="qualified against a degenerate baseline, within noise", ratio_low=0.9, ratio_high=1.1)
    qualified, _, why = qualification_of("two_stage", noisy)
    assert qualified is True and why.startswith("qualified by the point rule, within noise") and why.endswith("trivial baseline)")
