"""The reproduction's rules (trainer.benchmarks.reproduce): the task-selection
rule on baselines alone, the equal budgets of the multi-task jobs, and the
trivial row on the test split. The runs themselves are hours of training and
never run here; these check the decisions taken from their results."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtserve.tasks import parse_catalogue
from trainer.benchmarks import reproduce
from trainer.evaluate import ExampleRecord, Trivial, summarize, trivial_on
from trainer.job import load_job

TASK = parse_catalogue({"catalogue": "repro", "tasks": [{
    "name": "rt-polarity", "input_kind": "text", "taxonomy": "binary", "channels": ["review"], "instruction": "Fresh or rotten?",
    "labels": [{"name": "fresh", "verbalizer": "fresh"}, {"name": "rotten", "verbalizer": "rotten"}],
}]}, source="test").task("rt-polarity")


def _eval(golds: list[str], preds: list[str], split: str = "dev"):
    records = [ExampleRecord(id=f"{split}{i}", gold=g, pred=p, correct=g == p) for i, (g, p) in enumerate(zip(golds, preds))]
    return summarize(TASK, records, split=split, checkpoint="x")


def _baseline(correct: int, n: int = 200, *, steps: int = 300, saturation_epoch: float = 2.0, censored: bool = False) -> dict:
    golds = ["fresh"] * (n * 6 // 10) + ["rotten"] * (n - n * 6 // 10)  # majority: 60% fresh
    preds = [g if i < correct else ("rotten" if g == "fresh" else "fresh") for i, g in enumerate(golds)]
    trivial = Trivial("majority label of train", "fresh", _eval(golds, ["fresh"] * n))
    return {
        "kind": "single_task", "task": "rt-polarity", "dev": _eval(golds, preds).to_dict(), "trivial": trivial.to_dict(),
        "steps": steps, "saturation": {"epoch": saturation_epoch, "censored": censored, "last_epoch": 6.0,
                                       "high": saturation_epoch > 5 or censored},
        "test": _eval(golds, preds, "test").to_dict(),
    }


def test_a_task_is_kept_only_when_its_whole_interval_is_above_the_trivial_answer():
    clear = reproduce.select({"rt-polarity": _baseline(correct=180)})  # 90% against 60%
    row = clear["tasks"][-1]
    assert row["task"] == "rt-polarity" and row["kept"] and row["baseline"]["low"] > row["trivial"] == pytest.approx(0.6)
    near = reproduce.select({"rt-polarity": _baseline(correct=128)})  # 64%: the point is above 60%, the interval is not
    row = near["tasks"][-1]
    assert row["baseline"]["value"] > row["trivial"] > row["baseline"]["low"] and not row["kept"]
    assert near["kept"] == [] and near["budget_examples"] == 0
    assert not clear["complete"]  # the other candidates have not finished


def test_budget_is_the_examples_the_kept_baselines_used_and_groups_come_from_saturation():
    selection = reproduce.select({"rt-polarity": _baseline(correct=180, steps=301, saturation_epoch=5.5)})
    assert selection["budget_examples"] == 301 * reproduce.PER_STEP and selection["budget_steps"] == 301
    assert selection["high"] == ["rt-polarity"]
    assert reproduce.select({"rt-polarity": _baseline(correct=180, saturation_epoch=3.0)})["high"] == []
    assert reproduce.select({"rt-polarity": _baseline(correct=180, saturation_epoch=3.0, censored=True)})["high"] == ["rt-polarity"]


def test_every_mixture_job_gets_the_same_budget_and_parses(tmp_path: Path):
    selection = {"kept": ["rt-polarity", "privacy-qa", "chat-topic"], "high": ["rt-polarity", "privacy-qa"], "budget_steps": 700}
    specs = reproduce.mixture_specs(selection, 700)
    assert set(specs) == {"instance_balanced", "class_balanced", "unimax", "one_stage", "two_stage", reproduce.COMPACT}
    # the compact arm is two-stage with the task marker, nothing else changed
    assert specs[reproduce.COMPACT] == reproduce.merge(specs["two_stage"], {"mixture": {"suffixes": "compact"}})
    assert specs[reproduce.COMPACT]["mixture"]["suffixes"] == "compact" and "suffixes" not in specs["two_stage"]["mixture"]
    assert {s["max_steps"] for s in specs.values()} == {700}
    two = specs["two_stage"]["mixture"]
    assert two["stage1_steps"] == (1200 + 900 + 7) // 8 and two["stage1_steps"] + two["stage2_steps"] == 700
    assert two["cap_k"] == specs["one_stage"]["mixture"]["cap_k"] == 1200 // 5
    for name, spec in specs.items():
        reproduce._write_job(tmp_path, name, spec)
        job = load_job(tmp_path / "jobs" / f"{name}.yaml")  # the trainer accepts what the reproduction writes
        assert job.max_steps == 700 and job.baselines.max_steps == reproduce.BASELINE_MAX_STEPS
    with_gen = reproduce.mixture_specs(selection, 750, with_generation=True)
    assert with_gen["two_stage"]["tasks"][-1] == "news-title" and with_gen["two_stage"]["task_filter"] == {"group_by": "none"}
    assert reproduce.COMPACT not in with_gen  # Table 2 compares methods, not prompt styles
    assert "two_stage" not in reproduce.mixture_specs({**selection, "high": []}, 700)  # no stage 1 to run


def test_the_trivial_answer_is_scored_on_the_test_examples_too():
    test = _eval(["fresh", "rotten", "rotten", "rotten"], ["fresh", "rotten", "fresh", "rotten"], "test")
    scored = trivial_on(TASK, Trivial("majority label of train", "fresh", None), test)
    assert scored is not None and scored.split == "test" and scored.ids == test.ids
    assert scored.value.value == pytest.approx(0.25)
    assert trivial_on(TASK, Trivial("not defined for generation tasks", None, None), test) is None
