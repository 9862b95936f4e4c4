"""The staged pipeline: task filter, resource grouping, stage planning, and
whole toy jobs on the tiny model (stage order, baselines, manifests, the run
cache, interrupted runs, bad data)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from mtserve.checkpoints import read_manifest, verify_checkpoint
from mtserve.config import load_settings
from mtserve.errors import PreconditionError, ValidationError
from mtserve.precision import PROBE_ENV
from trainer.job import parse_job
from trainer.pipeline import cache, run_job
from trainer.pipeline.plan import baseline_steps, group_tasks, plan_stages, saturation
from trainer.results import MultiTaskRun, SingleTaskPoint, SingleTaskRun, Stage0Run
from trainer.sampling import instance_balanced, temperature_scaled_capped
from trainer.toy import toy_job, write_toy_data

# -- pure planning ----------------------------------------------------------------------


def test_task_filter_groups(hotel):
    kind = group_tasks(hotel.tasks, "kind")
    assert list(kind) == ["classification", "generation"]
    assert [t.name for t in kind["generation"]] == [t.name for t in hotel.tasks if t.is_generation]
    taxonomy = group_tasks(hotel.tasks, "taxonomy")
    assert set(taxonomy) == {"binary", "ordinal", "multiclass", "multilabel", "generation"}
    assert all(t.taxonomy.value == g for g, ts in taxonomy.items() for t in ts)
    assert sum(len(ts) for ts in taxonomy.values()) == len(hotel.tasks)
    assert list(group_tasks(hotel.tasks, "none")) == ["all"]


def hist(*points):
    return [SingleTaskPoint(i, e, v) for i, (e, v) in enumerate(points)]


def test_resource_grouping_from_saturation_epochs():
    early = saturation(hist((0, 0.5), (2, 0.9), (4, 0.85), (8, 0.8)), 5)
    assert early.epoch == 2 and not early.high and not early.censored  # overfits within 5 epochs: low-resource
    late = saturation(hist((0, 0.5), (3, 0.7), (6, 0.9), (9, 0.88)), 5)
    assert late.epoch == 6 and late.high  # saturates after 5 epochs: high-resource
    still = saturation(hist((0, 0.5), (1, 0.6), (2, 0.7)), 5)
    assert still.censored and still.high and still.last_epoch == 2  # still learning when it stopped
    zero = saturation(hist((0, 0.9), (1, 0.8)), 5)
    assert zero.epoch == 0 and not zero.high
    ties = saturation(hist((0, 0.5), (1, 0.9), (7, 0.9)), 5)
    assert ties.epoch == 1 and not ties.high  # the first evaluation reaching the best
    with pytest.raises(ValidationError):
        saturation([], 5)


def spec_for(**over):
    return parse_job({"name": "plan", "data_dir": "d", **over})


def test_two_stage_plan_stage1_is_high_resource_instance_balanced():
    spec = spec_for(training={"micro_batch": 1, "grad_accum": 8}, mixture={"cap_k": 100, "tau": 2.0}, resources={"high": ["a", "b"]})
    sizes = {"a": 400, "b": 200, "c": 40, "d": 16}
    stages, _notes = plan_stages(spec, "two_stage", sizes, ["a", "b"], per_step=8, lr=3e-5)
    assert [s.name for s in stages] == ["stage1", "stage2"]
    s1, s2 = stages
    assert s1.rates == instance_balanced({"a": 400, "b": 200}) and s1.strategy == "instance_balanced"
    assert s1.steps == 75  # 1 epoch of 600 examples at 8 per step
    assert s2.rates == temperature_scaled_capped(sizes, 2.0, 100) and set(s2.rates) == set(sizes)
    assert s2.steps == 10 * (100 + 100 + 40 + 16) // 8  # 10 epochs of the capped pool
    assert s2.eval_at_end and not s1.eval_at_end and not s2.select_best


def test_two_stage_plan_is_capped_in_proportion_and_skips_an_empty_stage1():
    spec = spec_for(max_steps=100)
    stages, notes = plan_stages(spec, "two_stage", {"a": 800, "b": 80}, ["a"], per_step=8, lr=3e-5)
    assert sum(s.steps for s in stages) == 100 and notes["uncapped_steps"] == {"stage1": 100, "stage2": 1100}
    assert stages[0].steps == round(100 * 100 / 1200)
    stages, notes = plan_stages(spec_for(), "two_stage", {"a": 80, "b": 80}, [], per_step=8, lr=3e-5)
    assert [s.name for s in stages] == ["stage2"] and "skipped" in notes["stage1"]


def test_one_stage_methods():
    sizes = {"a": 1000, "b": 10}
    ib, _ = plan_stages(spec_for(method="instance_balanced"), "instance_balanced", sizes, [], per_step=10, lr=3e-5)
    assert ib[0].rates == pytest.approx({"a": 1000 / 1010, "b": 10 / 1010}) and ib[0].steps == 1010
    cb, _ = plan_stages(spec_for(method="class_balanced"), "class_balanced", sizes, [], per_step=10, lr=3e-5)
    assert cb[0].rates == {"a": 0.5, "b": 0.5}
    tc, _ = plan_stages(spec_for(method="temperature_capped", mixture={"cap_k": 100}), "temperature_capped", sizes, [], per_step=10, lr=3e-5)
    assert tc[0].steps == 10 * 110 // 10
    um, _ = plan_stages(spec_for(method="unimax", mixture={"stage2_steps": 20, "unimax_max_epochs": 2}), "unimax", sizes, [], per_step=10, lr=3e-5)
    assert um[0].steps == 20 and um[0].rates["b"] == pytest.approx(20 / 200)  # b capped at 2 epochs of a 200-example budget
    capped, notes = plan_stages(spec_for(method="class_balanced", max_steps=50), "class_balanced", sizes, [], per_step=10, lr=3e-5)
    assert capped[0].steps == 50 and notes["uncapped_steps"] == {"mixture": 1010}


def test_baseline_steps():
    assert baseline_steps(spec_for(), 100, 8) == (125, {"examples_per_step": 8, "max_steps": 15000})
    steps, notes = baseline_steps(spec_for(baselines={"max_steps": 50}), 100, 8)
    assert steps == 50 and notes["uncapped_steps"] == 125
    assert baseline_steps(spec_for(baselines={"steps": 7}), 100, 8)[0] == 7


# -- whole jobs on the tiny model ---------------------------------------------------------------


def make_job(tmp: Path, base: Path, **over):
    write_toy_data(tmp, tasks=("sentiment", "topic", "headline"), train=16, dev=6)
    data = toy_job(tmp, base_model=str(base), **over)
    return parse_job(data, tmp)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_llama_dir):
    """A two_stage job whose high-resource tasks come from baseline saturation,
    with a generation task filtered into its own group."""
    tmp = tmp_path_factory.mktemp("toyjob")
    spec = make_job(tmp, tiny_llama_dir, tasks=["sentiment", "topic", "headline"], resources=None,
                    baselines={"steps": 4}, eval={"every_steps": 2})
    events: list[dict] = []
    result = run_job(spec, emit=events.append)
    return spec, result, events


def test_job_trains_baselines_then_groups(toy_run):
    _spec, result, events = toy_run
    started = [e["run"] for e in events if e["event"] == "run_started"]
    assert [r.split("-")[0] + "-" + r.split("-")[1] for r in started] == ["st-sentiment", "st-topic", "st-headline", "mt-toy"]
    groups = {g.group: g for g in result.groups}
    assert set(groups) == {"classification", "generation"}
    assert groups["classification"].tasks == ["sentiment", "topic"] and not groups["classification"].reused_baseline
    assert groups["generation"].reused_baseline  # a group of one task is its single-task model
    assert len(result.checkpoints) == 2
    rows = {r.task: r for r in result.rows}
    assert rows["headline"].metric == "rouge_l" and rows["sentiment"].metric == "accuracy"
    assert all(r.zero_shot is not None and r.baseline is not None and r.multi_task is not None for r in rows.values())
    assert "Zero-shot" in result.table_markdown and "Single-task" in result.table_markdown


def test_high_resource_tasks_come_from_baseline_saturation(toy_run):
    _spec, _result, events = toy_run
    resources = [e for e in events if e["event"] == "resources"]
    assert len(resources) == 1 and resources[0]["source"] == "baseline saturation"
    detail = resources[0]["detail"]
    assert set(detail) == {"sentiment", "topic", "headline"}
    assert sorted(resources[0]["high"]) == sorted(t for t, d in detail.items() if d["high"])


def test_stage_order_stage1_only_high_resource_tasks(toy_run):
    _spec, _result, events = toy_run
    high = next(e for e in events if e["event"] == "resources")["high"]
    mt = [e for e in events if e.get("run", "").startswith("mt-") and e["event"] == "stage_started"]
    cls_high = sorted(h for h in high if h in ("sentiment", "topic"))
    if cls_high:
        assert [e["stage"] for e in mt] == ["stage1", "stage2"]
        assert sorted(mt[0]["rates"]) == cls_high
        steps = [e for e in events if e.get("run", "").startswith("mt-") and e["event"] == "step"]
        assert [e["stage"] for e in steps] == sorted((e["stage"] for e in steps), key=["stage1", "stage2"].index)
    else:
        assert [e["stage"] for e in mt] == ["stage2"]
    assert sorted(mt[-1]["rates"]) == ["sentiment", "topic"]


def test_baselines_are_honestly_labelled(toy_run, tiny_llama_dir):
    spec, result, _events = toy_run
    for r in result.rows:
        assert r.baseline_selected is not None and r.baseline_checkpoint is not None and r.baseline and r.zero_shot
        if r.baseline_selected.startswith("zero-shot"):
            assert r.baseline_checkpoint == "tiny-llama"
            assert r.baseline.estimate.value == r.zero_shot.estimate.value
        else:
            assert r.baseline_checkpoint.startswith(f"st-{r.task}-")
            assert r.baseline.estimate.value > r.zero_shot.estimate.value  # a fine-tuned step is kept only when it beats zero-shot
            manifest = read_manifest(spec.path("checkpoints") / r.baseline_checkpoint)
            assert manifest.metrics["selected"]["step"] > 0 and not manifest.metrics["selected"]["zero_shot"]


def test_multi_task_manifest(toy_run, tiny_llama_dir):
    _spec, result, _events = toy_run
    group = next(g for g in result.groups if g.group == "classification")
    manifest = verify_checkpoint(group.run.checkpoint.path)
    assert manifest.kind == "full" and manifest.parent == "tiny-llama" and manifest.base["id"] == "tiny-llama"
    assert [t["name"] for t in manifest.tasks] == ["sentiment", "topic"]
    assert manifest.tasks[1]["labels"] == [{"name": n, "verbalizer": n} for n in ("room", "food", "staff")]
    assert all("version" in t and t["content_hash"] for t in manifest.tasks)
    t = manifest.training
    assert t["method"] == "two_stage" and t["training"]["lr"] == 1e-3 and t["mixture"]["cap_k"] == 8000
    assert t["data"]["topic"]["train"]["sha256"] and t["data"]["topic"]["dev"]["evaluated"] == 6
    assert [s["name"] for s in t["stages"]][-1] == "stage2"
    m = manifest.metrics
    assert set(m["dev"]) == {"sentiment", "topic"} and m["dev"]["topic"]["metric"] == "accuracy"
    assert set(m["baseline"]) == {"sentiment", "topic"} and m["baseline"]["topic"]["run"].startswith("st-topic-")
    assert set(m["qualification"]) == {"sentiment", "topic"}
    assert m["qualified"] == sorted(n for n, q in m["qualification"].items() if q["qualified"])
    assert "low" in m["dev"]["sentiment"] and "ratio_low" in m["qualification"]["sentiment"]


def test_a_finished_job_is_reused_from_the_run_cache(toy_run):
    spec, result, _ = toy_run
    events: list[dict] = []
    again = run_job(spec, emit=events.append)
    assert not [e for e in events if e["event"] in ("step", "run_started")]
    assert len([e for e in events if e["event"] == "run_cached"]) == 4
    assert again.rows == result.rows and again.checkpoints == result.checkpoints
    # finished runs keep their result and evaluations, not the bulky resume state
    for run in again.runs:
        folder = spec.runs_path / run
        assert (folder / "result.json").exists() and not list(folder.glob("state-*"))


def test_run_results_read_back_unchanged(toy_run):
    spec, _result, _ = toy_run
    results = [json.loads(p.read_text()) for p in sorted(spec.runs_path.glob("*/result.json"))]
    assert sorted(r["kind"] for r in results) == ["multi_task"] + ["single_task"] * 3
    assert all(reads_back_unchanged(r) for r in results)


def test_tables_assemble_from_finished_runs(toy_run):
    from trainer.report import build_table1
    from trainer.runs import RunStore, run_results

    spec, _result, _ = toy_run
    rows = run_results(RunStore(spec.runs_path).finished())
    keys = sorted({(r.method, r.group) for r in rows})
    assert ("two_stage", "classification") in keys and ("single_task", "topic") in keys and ("zero_shot", "topic") in keys
    assert {r.model for r in rows} == {"tiny-llama"}
    table = build_table1([r for r in rows if r.method != "two_stage" or r.group == "classification"], tasks=["sentiment", "topic"])
    assert [row.method for row in table.rows] == ["single_task", "zero_shot", "two_stage"]


class Crash(Exception):
    pass


def test_interrupted_run_needs_resume_or_restart(tmp_path, tiny_llama_dir):
    spec = make_job(tmp_path, tiny_llama_dir, baselines={"train": False}, mixture={"stage1_steps": 2, "stage2_steps": 4})

    def crash(event):
        if event.get("event") == "state_saved" and event.get("stage") == "stage2":
            raise Crash()

    with pytest.raises(Crash):
        run_job(spec, emit=crash)
    with pytest.raises(PreconditionError, match="--resume"):
        run_job(spec)
    events: list[dict] = []
    result = run_job(spec, resume=True, emit=events.append)
    assert next(e for e in events if e["event"] == "resumed")["stage"] == "stage2"
    assert result.rows[0].baseline is None and result.rows[0].qualified is None  # no baselines: nothing to gate on
    fresh = run_job(make_job(tmp_path / "b", tiny_llama_dir, baselines={"train": False}, mixture={"stage1_steps": 2, "stage2_steps": 4}))
    a = read_manifest(result.checkpoints[0]).files["model.safetensors"]
    b = read_manifest(fresh.checkpoints[0]).files["model.safetensors"]
    assert a == b  # resumed == uninterrupted, byte for byte


def test_stage0_continual_pretraining_becomes_the_base(tmp_path, tiny_llama_dir):
    (tmp_path / "corpus.txt").write_text(
        "Guest called about a cancelled booking.\nAgent apologised.\n\n" + "The hotel lobby was quiet that night. " * 40 + "\n",
        encoding="utf-8",
    )
    spec = make_job(tmp_path, tiny_llama_dir, stage0={"corpus": "corpus.txt", "steps": 3}, baselines={"steps": 2})
    events: list[dict] = []
    result = run_job(spec, emit=events.append)
    started = [e for e in events if e["event"] == "run_started"]
    assert started[0]["run"].startswith("stage0-") and started[0]["stages"][0]["rates"] == {"corpus": 1.0}
    stage0 = next(e["checkpoint"] for e in events if e["event"] == "run_finished" and e["run"].startswith("stage0-"))
    m0 = verify_checkpoint(stage0)
    assert m0.kind == "full" and m0.parent == "tiny-llama" and m0.training["method"] == "stage0"
    assert len(m0.training["corpus_sha256"]) == 64 and m0.tasks == []
    mt = read_manifest(result.checkpoints[0])
    assert mt.parent == m0.id  # stages 1-2 start from the domain-adapted model
    for r in result.rows:  # and so do the baselines (their zero-shot is the stage-0 model's)
        assert r.baseline_checkpoint == m0.id or read_manifest(spec.path("checkpoints") / str(r.baseline_checkpoint)).parent == m0.id
    assert reads_back_unchanged(json.loads(next(spec.runs_path.glob("stage0-*/result.json")).read_text()))
    events2: list[dict] = []
    run_job(spec, emit=events2.append)
    assert not [e for e in events2 if e["event"] == "run_started"]


def test_bad_lines_fail_by_default_and_can_be_reported(tmp_path, tiny_llama_dir):
    spec = make_job(tmp_path, tiny_llama_dir, baselines={"train": False})
    path = tmp_path / "data" / "topic" / "train.jsonl"
    path.write_text(path.read_text() + '{"text": "x", "label": "spa"}\nnot json\n')
    with pytest.raises(ValidationError) as info:
        run_job(spec)
    assert "train.jsonl:17" in str(info.value) and "train.jsonl:18" in str(info.value) and "on_bad_lines" in str(info.value)
    events: list[dict] = []
    result = run_job(parse_job({**spec.to_dict(), "on_bad_lines": "report"}, tmp_path), emit=events.append)
    assert len(result.bad_lines) == 2 and next(e for e in events if e["event"] == "bad_lines")["count"] == 2
    manifest = read_manifest(result.checkpoints[0])
    assert manifest.training["data"]["topic"]["train"]["bad_lines"] == 2


def test_resolution_errors_name_the_setting(tmp_path, tiny_llama_dir):
    spec = make_job(tmp_path, tiny_llama_dir, tasks=["sentiment", "nope"], resources={"high": []})
    with pytest.raises(ValidationError, match=r"tasks\[1\].*'nope'"):
        run_job(spec)
    with pytest.raises(ValidationError, match="base_model"):
        run_job(make_job(tmp_path, tmp_path / "no-such-model"))
    spec = make_job(tmp_path, tiny_llama_dir)
    (tmp_path / "data" / "topic" / "dev.jsonl").unlink()
    with pytest.raises(ValidationError, match="no dev split"):
        run_job(spec)
    with pytest.raises(ValidationError, match="output.checkpoints_dir"):
        run_job(make_job(tmp_path, tiny_llama_dir, tasks=["sentiment"], finetune="lora"))  # adapter not beside its base


def test_lora_job_writes_a_loadable_adapter(tmp_path, tiny_llama_dir):
    from mtserve.engine import Engine, Request
    from mtserve.inputs import Text
    from mtserve.models import load_checkpoint
    from mtserve.tasks import Channel, load_catalogue

    spec = make_job(tmp_path, tiny_llama_dir, finetune="lora", lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                    baselines={"train": False}, output={"checkpoints_dir": str(tiny_llama_dir.parent)})
    result = run_job(spec)
    manifest = verify_checkpoint(result.checkpoints[0])
    assert manifest.kind == "lora" and manifest.base["id"] == "tiny-llama" and "adapter_model.safetensors" in manifest.files
    assert manifest.training["lora"]["r"] == 4
    lm = load_checkpoint(result.checkpoints[0], device="cpu", dtype="float32")
    cat = load_catalogue(tmp_path / "catalogue.yaml")
    pred = Engine(lm.model, lm.tokenizer, cat.truncation).predict([Request(cat.task("topic"), Text("The coffee was awful.", Channel.REVIEW))])[0]
    assert pred.label in ("room", "food", "staff")
    assert json.loads((Path(result.checkpoints[0]) / "adapter_config.json").read_text())["target_modules"]


@pytest.mark.slow
def test_smollm2_job_trains_and_its_checkpoint_scores(tmp_path, default_model_dir):
    """A few real optimizer steps of SmolLM2-135M on the toy tasks (slow tier)."""
    import math

    from mtserve.engine import Engine, Request
    from mtserve.inputs import Text
    from mtserve.models import load_checkpoint
    from mtserve.tasks import Channel, load_catalogue

    spec = make_job(tmp_path, default_model_dir, baselines={"train": False}, max_seq_len=256, max_steps=100,
                    mixture={"stage1_steps": 1, "stage2_steps": 3}, training={"lr": 3e-5, "micro_batch": 4, "grad_accum": 2})
    events: list[dict] = []
    result = run_job(spec, emit=events.append)
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(e["loss"]) and e["tokens_per_s"] > 0 for e in steps)
    lm = load_checkpoint(result.checkpoints[0], device="cpu", dtype="float32")
    cat = load_catalogue(tmp_path / "catalogue.yaml")
    pred = Engine(lm.model, lm.tokenizer, cat.truncation).predict([Request(cat.task("sentiment"), Text("The bed was lovely.", Channel.REVIEW))])[0]
    assert pred.label in ("positive", "negative")
    print("SmolLM2 seconds per step:", [round(e["seconds_per_step"], 2) for e in steps])


# -- run keys: resolved plans, precision, prompt format, dev selection ----------------------

_REAL_OPEN_RUN = cache.open_run


class Keyed(Exception):
    """Raised in place of training: the run a job would open, and its key payload."""

    def __init__(self, run_id: str, payload: dict):
        super().__init__(run_id)
        self.run_id, self.payload = run_id, payload


def opened_run(spec, monkeypatch, kind: str = "st") -> tuple[str, dict]:
    """The id (and key payload) of the first `kind` run the job opens, through
    the real payload and the real _open_run, stopped before any training."""

    def stop(ctx, k, label, payload):
        rc = _REAL_OPEN_RUN(ctx, k, label, payload)
        if k == kind:
            raise Keyed(rc.run_id, payload)
        return rc

    # The probe's variable is for the probe: load_settings refuses it as an unknown
    # MTSERVE_ setting (see tests/mtserve/test_precision.py), so settings are read without it.
    settings = load_settings(env={k: v for k, v in os.environ.items() if k != PROBE_ENV})
    monkeypatch.setattr(cache, "open_run", stop)
    try:
        with pytest.raises(Keyed) as info:
            run_job(spec, settings=settings)
    finally:
        monkeypatch.setattr(cache, "open_run", _REAL_OPEN_RUN)
    return info.value.run_id, info.value.payload


ST_JOB = {"tasks": ["sentiment"], "method": "single_task", "mixture": None, "resources": None, "max_steps": 12,
              "training": {"precision": "fp32"}, "baselines": {"steps": 2}, "eval": {"every_steps": 2, "dev_cap": 4, "patience": 5}}


def st_job(tmp: Path, base: Path, **over):
    """A one-task single_task toy job (the keys below differ from it by one setting)."""
    job = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ST_JOB.items()}
    for key, value in over.items():
        job[key] = {**job[key], **value} if isinstance(value, dict) and isinstance(job.get(key), dict) else value
    return make_job(tmp, base, **job)


def test_baseline_epochs_and_the_equal_steps_share_a_run(tmp_path, tiny_llama_dir):
    by_steps = st_job(tmp_path, tiny_llama_dir)
    epochs = 0.5
    n, per_step = 16, by_steps.examples_per_step  # the toy data's 16 training examples, 2 x 2 per step
    assert math.ceil(epochs * n / per_step) == by_steps.baselines.steps == 2
    first = run_job(by_steps)
    (run_id,) = first.runs
    assert run_id.startswith("st-sentiment-")
    key = json.loads((by_steps.runs_path / run_id / "key.json").read_text())
    assert key["stages"][0]["steps"] == 2 and key["stages"][0]["patience"] == 5 and "epochs" not in key
    by_epochs = st_job(tmp_path, tiny_llama_dir, baselines={"steps": None, "epochs": epochs})
    assert by_epochs.baselines.steps is None and by_epochs.baselines.epochs == epochs
    events: list[dict] = []
    again = run_job(by_epochs, emit=events.append)
    assert again.runs == [run_id]
    assert not [e for e in events if e["event"] in ("run_started", "step")]
    assert [e["run"] for e in events if e["event"] == "run_cached"] == [run_id]
    assert again.rows == first.rows


def test_a_max_steps_that_does_not_bind_leaves_the_baseline_key(tmp_path, tiny_llama_dir, monkeypatch):
    ref, payload = opened_run(st_job(tmp_path, tiny_llama_dir), monkeypatch)
    assert payload["stages"][0]["steps"] == 2 and "max_steps" not in payload
    assert opened_run(st_job(tmp_path, tiny_llama_dir, max_steps=100), monkeypatch)[0] == ref
    assert opened_run(st_job(tmp_path, tiny_llama_dir, baselines={"max_steps": 50}), monkeypatch)[0] == ref
    # neither do logging and state cadence
    assert opened_run(st_job(tmp_path, tiny_llama_dir, training={"state_every_steps": 1, "log_every_steps": 3}), monkeypatch)[0] == ref
    # a max_steps that binds is a different run (one step, not two)
    bound, payload = opened_run(st_job(tmp_path, tiny_llama_dir, max_steps=1), monkeypatch)
    assert bound != ref and payload["stages"][0]["steps"] == 1
    # and so are more epochs
    assert opened_run(st_job(tmp_path, tiny_llama_dir, baselines={"steps": None, "epochs": 1.0}), monkeypatch)[0] != ref


@pytest.mark.parametrize("change", [
    {"training": {"lr": 2e-3}},
    {"eval": {"dev_cap": 3}},
    {"eval": {"dev_cap": None}},
    {"eval": {"patience": 0}},
    {"eval": {"every_steps": 1}},
    {"training": {"precision": "bf16"}},
    {"seed": 1},
], ids=["lr", "dev_cap", "no_dev_cap", "patience", "eval_every", "bf16", "seed"])
def test_settings_that_change_a_baseline_change_its_key(tmp_path, tiny_llama_dir, monkeypatch, change):
    ref, _ = opened_run(st_job(tmp_path, tiny_llama_dir), monkeypatch)
    other, _ = opened_run(st_job(tmp_path, tiny_llama_dir, **change), monkeypatch)
    assert other != ref


def test_the_prompt_format_and_dev_selection_are_in_the_key(tmp_path, tiny_llama_dir, monkeypatch):
    spec = st_job(tmp_path, tiny_llama_dir)
    ref, payload = opened_run(spec, monkeypatch)
    # no multi-label task: format 2 (a multi-label question's label last) renders it as format 1 did
    assert payload["prompt_format"] == 1 and payload["eval"]["dev_selection"] == cache.DEV_SELECTION
    monkeypatch.setattr(cache, "prompt_format_for", lambda tasks: 2)
    prompt, _ = opened_run(spec, monkeypatch)
    monkeypatch.undo()
    monkeypatch.setattr(cache, "DEV_SELECTION", "stratified-hash-v2")
    selection, _ = opened_run(spec, monkeypatch)
    monkeypatch.undo()
    assert len({ref, prompt, selection}) == 3
    assert opened_run(spec, monkeypatch)[0] == ref  # and back again
    # a multi-label task in the job changes the format of its own runs only
    with_multi_label = st_job(tmp_path, tiny_llama_dir, tasks=["sentiment", "aspects"])
    write_toy_data(tmp_path, tasks=("aspects",), train=16, dev=6)
    beside, payload = opened_run(with_multi_label, monkeypatch)
    assert beside == ref and payload["task"]["name"] == "sentiment" and payload["prompt_format"] == 1


def test_the_key_holds_the_precision_auto_resolved_to(tmp_path, tiny_llama_dir, monkeypatch):
    fp32, _ = opened_run(st_job(tmp_path, tiny_llama_dir), monkeypatch)
    bf16, _ = opened_run(st_job(tmp_path, tiny_llama_dir, training={"precision": "bf16"}), monkeypatch)
    monkeypatch.setenv(PROBE_ENV, "0")
    auto_off, payload = opened_run(st_job(tmp_path, tiny_llama_dir, training={"precision": "auto"}), monkeypatch)
    assert payload["training"]["precision"] == "fp32" and auto_off == fp32
    monkeypatch.setenv(PROBE_ENV, "1")
    auto_on, payload = opened_run(st_job(tmp_path, tiny_llama_dir, training={"precision": "auto"}), monkeypatch)
    assert payload["training"]["precision"] == "bf16" and auto_on == bf16
    assert payload["eval_dtype"] == "float32"  # a CPU serves in float32 either way


MT_JOB = {"tasks": ["sentiment", "topic"], "baselines": {"train": False}, "resources": {"high": ["sentiment"]},
              "training": {"precision": "fp32"}, "eval": {"dev_cap": 4}}


def test_multi_task_keys_hold_the_resolved_stages(tmp_path, tiny_llama_dir, monkeypatch):
    # 16 training examples per task, 4 per step: stage 1 (sentiment) 1 epoch = 4 steps, stage 2 (both) 1 epoch = 8 steps
    ref, payload = opened_run(make_job(tmp_path, tiny_llama_dir, **MT_JOB, mixture={"stage1_steps": 4, "stage2_steps": 8}), monkeypatch, "mt")
    assert [(s["name"], s["steps"]) for s in payload["stages"]] == [("stage1", 4), ("stage2", 8)] and "mixture" not in payload
    epochs = make_job(tmp_path, tiny_llama_dir, **MT_JOB, mixture={"stage1_steps": None, "stage2_steps": None, "stage1_epochs": 1.0, "stage2_epochs": 1.0})
    assert opened_run(epochs, monkeypatch, "mt")[0] == ref
    same = make_job(tmp_path, tiny_llama_dir, **MT_JOB, max_steps=50, mixture={"stage1_steps": 4, "stage2_steps": 8})
    assert opened_run(same, monkeypatch, "mt")[0] == ref  # max_steps does not bind
    for change in ({"mixture": {"stage1_steps": 4, "stage2_steps": 7}}, {"resources": {"high": ["topic"]}, "mixture": {"stage1_steps": 4, "stage2_steps": 8}},
                   {"training": {"precision": "fp32", "lr": 3e-3}, "mixture": {"stage1_steps": 4, "stage2_steps": 8}},
                   {"max_steps": 10, "mixture": {"stage1_steps": 4, "stage2_steps": 8}}):
        over = {**MT_JOB, **change}
        assert opened_run(make_job(tmp_path, tiny_llama_dir, **over), monkeypatch, "mt")[0] != ref, change
    # tau changes nothing when the tasks are the same size (equal rates at any temperature): the same run
    tau = make_job(tmp_path, tiny_llama_dir, **MT_JOB, mixture={"stage1_steps": 4, "stage2_steps": 8, "tau": 1.0})
    assert opened_run(tau, monkeypatch, "mt")[0] == ref
    monkeypatch.setattr(cache, "DEV_SELECTION", "stratified-hash-v2")
    assert opened_run(make_job(tmp_path, tiny_llama_dir, **MT_JOB, mixture={"stage1_steps": 4, "stage2_steps": 8}), monkeypatch, "mt")[0] != ref


def test_compact_suffixes_change_the_mixture_key_only(tmp_path, tiny_llama_dir, monkeypatch):
    """A natural mixture keeps the key it always had (suffixes are recorded
    only when compact); a compact one is another run."""
    steps = {"stage1_steps": 4, "stage2_steps": 8}
    natural, payload = opened_run(make_job(tmp_path, tiny_llama_dir, **MT_JOB, mixture=steps), monkeypatch, "mt")
    assert "suffixes" not in payload
    compact, payload = opened_run(make_job(tmp_path, tiny_llama_dir, **MT_JOB, mixture={**steps, "suffixes": "compact"}), monkeypatch, "mt")
    assert compact != natural and payload["suffixes"] == "compact"


def test_a_compact_mixture_is_trained_recorded_and_served_compact(tmp_path, tiny_llama_dir):
    from mtserve.engine import Engine
    from mtserve.inputs import Text
    from mtserve.models import load_checkpoint
    from mtserve.prompt import PromptStyle
    from mtserve.tasks import Channel, load_catalogue
    from trainer.pipeline import multitask

    spec = make_job(tmp_path, tiny_llama_dir, **{**MT_JOB, "mixture": {"stage1_steps": 1, "stage2_steps": 2, "suffixes": "compact"}})
    trained_on: list = []  # what the mixture's training examples were rendered from

    def spy(ctx, tokenizer, tasks, style):
        data = multitask_encode(ctx, tokenizer, tasks, style)
        trained_on.append((style, tokenizer.decode(list(data["topic"].items[0][0].ids))))
        return data

    multitask_encode = multitask.encode_tasks
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(multitask, "encode_tasks", spy)
        result = run_job(spec)
    learnt = PromptStyle(1, "compact", frozenset({"sentiment", "topic"}))
    assert [style for style, _ in trained_on] == [learnt] and "assistant\ntopic\n" in trained_on[0][1]
    manifest = verify_checkpoint(result.checkpoints[0])
    assert manifest.training["suffixes"] == "compact" and manifest.prompt_style == learnt
    assert ": two_stage, compact suffixes (dev)" in Path(result.report_files["report"]).read_text()
    lm = load_checkpoint(result.checkpoints[0], device="cpu", dtype="float32")
    cat = load_catalogue(tmp_path / "catalogue.yaml")
    engine = Engine(lm.model, lm.tokenizer, cat.truncation, style=lm.manifest.prompt_style)
    review = Text("The coffee was awful.", Channel.REVIEW)
    assert lm.tokenizer.decode(engine.renderer.render(cat.task("topic"), review).suffix).endswith("assistant\ntopic\n")
    from mtserve.engine import Request
    from mtserve.errors import PreconditionError

    learnt, unknown = engine.predict([Request(cat.task("topic"), review), Request(cat.task("headline"), review)])
    assert learnt.label in ("room", "food", "staff") and isinstance(unknown, PreconditionError)  # not trained on headline


# -- run keys, pinned -------------------------------------------------------------------------


class _Opened(Exception):
    pass


def opened_keys(spec, monkeypatch, stop_at: str) -> dict[str, str]:
    """run id -> key of every run the job opens, up to and including the first
    `stop_at` run (not trained); the runs before it train as usual."""
    keys: dict[str, str] = {}

    def record(ctx, kind, label, payload):
        rc = _REAL_OPEN_RUN(ctx, kind, label, payload)
        keys[rc.run_id] = rc.key
        if kind == stop_at:
            raise _Opened()
        return rc

    settings = load_settings(env={k: v for k, v in os.environ.items() if k != PROBE_ENV})
    monkeypatch.setattr(cache, "open_run", record)
    try:
        with pytest.raises(_Opened):
            run_job(spec, settings=settings)
    finally:
        monkeypatch.setattr(cache, "open_run", _REAL_OPEN_RUN)
    return keys


# The keys below were computed by the trainer of 2026-12-02 (run format 1). A
# change to what goes into a key, or to how it is hashed, orphans every finished
# run of every runs folder (the reproduction's included): a key may change only
# with a deliberate RUN_FORMAT bump, never as a side effect of a refactoring.
PINNED_KEYS = {
    "two_stage": {
        "st-sentiment-563c5386c567": "563c5386c5675b5ef8814f652c1fee0c133d70ad28c8c288a25b86d8383013c3",
        "st-topic-501c9f1ca520": "501c9f1ca5208e38f7bd748d121eca9cde91e87e10f912f7a960ef0b3088863f",
        "st-headline-1f106affa828": "1f106affa828749640c96890e751c7c8797312888221a90f77d59496c3e196d7",
        "mt-toy-classification-9d612c02702c": "9d612c02702c0337e143fce310bcfc0d5b222220822236d45573557db2ff1d43",
    },
    "no_baselines": {"mt-toy-all-955d87ff7315": "955d87ff731539bbb172093ef886232a31524d0c1b7e6e878fa6fc87cd494568"},
    "single_task": {"st-sentiment-efdf981d4afb": "efdf981d4afb61f7a0e065ad80526f4065213489f3b349716a5ff583b40fd122"},
    "stage0": {"stage0-corpus-ab94f672e447": "ab94f672e4473a33e45b4ac304d2ee6e18d0865f5f03f14ded7e2932d34e2dbf"},
}


def pinned_jobs(tmp: Path, base: Path) -> dict[str, tuple[object, str]]:
    common = {"training": {"precision": "fp32"}, "eval": {"every_steps": 1, "dev_cap": 4}}
    return {
        # three baselines (trained, one step each), then the classification group's run (opened, not trained);
        # the generation task is a group of its own that reuses its baseline
        "two_stage": (make_job(tmp / "a", base, tasks=["sentiment", "topic", "headline"], resources={"high": ["sentiment"]},
                               baselines={"steps": 1}, **common), "mt"),
        "no_baselines": (make_job(tmp / "b", base, tasks=["sentiment", "topic", "headline"], baselines={"train": False},
                                  task_filter={"group_by": "none"}, resources={"high": ["topic"]}, **common), "mt"),
        "single_task": (st_job(tmp / "c", base, eval={"test": True}), "st"),
        "stage0": (make_job(tmp / "d", base, stage0={"corpus": "corpus.txt", "steps": 3}, **common), "stage0"),
    }


def test_run_keys_of_toy_jobs_are_pinned(tmp_path, tiny_llama_dir, monkeypatch):
    from trainer import checkpoint as ck

    # The tiny model is random weights built by the test session: its digest is
    # not what this test pins, the trainer's payloads are.
    monkeypatch.setattr(ck, "base_identity", lambda base_dir: {"id": "tiny-llama", "content_sha256": "0" * 64})
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "corpus.txt").write_text("Guest called about a booking.\n\n" + "The lobby was quiet that night. " * 40 + "\n")
    got = {name: opened_keys(spec, monkeypatch, stop) for name, (spec, stop) in pinned_jobs(tmp_path, tiny_llama_dir).items()}
    assert got == PINNED_KEYS


REPRODUCTION_RUNS = Path(__file__).resolve().parents[2] / "docs" / "reproduction-runs"


def reads_back_unchanged(result: dict) -> bool:
    """The typed result's to_dict is the JSON it was read from (floats, ints and absent keys included)."""
    kinds = {cls.kind: cls for cls in (Stage0Run, SingleTaskRun, MultiTaskRun)}
    typed = kinds[result["kind"]].from_dict(result)
    return json.dumps(typed.to_dict(), sort_keys=True) == json.dumps(result, sort_keys=True)


def test_committed_reproduction_runs_keep_their_keys_and_read_back_unchanged():
    from trainer.runs import run_key

    folders = sorted(p for p in REPRODUCTION_RUNS.iterdir() if (p / "result.json").exists())
    assert len(folders) == 14
    for folder in folders:
        key = run_key(json.loads((folder / "key.json").read_text()))
        result = json.loads((folder / "result.json").read_text())
        assert result["key"] == key and folder.name == result["run_id"] and folder.name.endswith(key[:12])
        assert reads_back_unchanged(result), folder.name  # written before trivial baselines, precision records, patience
