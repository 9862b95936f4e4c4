"""The paper-style tables assembled from finished runs."""

from __future__ import annotations

import json
import random

import pytest

from mtserve.errors import ValidationError
from trainer.evaluate import ExampleRecord, TaskEval, summarize
from trainer.report import (
    RunResult,
    average_estimate,
    build_table1,
    build_table2,
    method_key,
    method_title,
    qualification_lines,
    render_json,
    render_markdown,
)

N = 400
CLS = ("rc-a", "rc-i", "id")  # three binary tasks of the hotel catalogue


def answers(accuracy: float, seed: int) -> list[bool]:
    """Exactly round(accuracy * N) right answers, in a seeded order."""
    k = round(accuracy * N)
    out = [True] * k + [False] * (N - k)
    random.Random(seed).shuffle(out)
    return out


def cls_eval(hotel, name: str, correct: list[bool]) -> TaskEval:
    records = [ExampleRecord(f"{name}-{i}", "yes", "yes" if ok else "no", ok) for i, ok in enumerate(correct)]
    return summarize(hotel.task(name), records, n_resamples=300)


def gen_eval(hotel, scores: list[float]) -> TaskEval:
    records = [ExampleRecord(f"cs-{i}", "ref", "cand", s == 1.0, rouge_l=s) for i, s in enumerate(scores)]
    return summarize(hotel.task("cs"), records, n_resamples=300)


def degrade(correct: list[bool], n_down: int) -> list[bool]:
    """The same answers with the first n_down right ones made wrong (paired with the baseline)."""
    out, left = list(correct), n_down
    for i, ok in enumerate(out):
        if ok and left:
            out[i], left = False, left - 1
    return out


@pytest.fixture(scope="module")
def base(hotel):
    return {name: answers(0.8, seed) for seed, name in enumerate(CLS)}


@pytest.fixture(scope="module")
def table1_runs(hotel, base) -> list[RunResult]:
    runs = [RunResult("single_task", name, {name: cls_eval(hotel, name, base[name])}, checkpoint=f"st-{name}") for name in CLS]
    runs.append(RunResult("zero_shot", "all", {n: cls_eval(hotel, n, answers(0.5, 9)) for n in CLS}, checkpoint="base"))
    # ours: two tasks equal to the baseline, one 10 points down -> 2 qualified on one model
    ours = {n: cls_eval(hotel, n, base[n] if n != "id" else degrade(base[n], 40)) for n in CLS}
    runs.append(RunResult("two_stage", "classification", ours, checkpoint="ck-ours"))
    # class-balanced: everything 10 points down -> none qualified
    runs.append(RunResult("class_balanced", "classification", {n: cls_eval(hotel, n, degrade(base[n], 40)) for n in CLS}))
    return runs


def test_method_names():
    assert method_key("Single-task") == method_key("single-task") == "single_task"
    assert method_key("ours (w/o 2-stage)") == "one_stage" and method_key("temperature_capped") == "one_stage"
    assert method_title("unimax") == "UniMax" and method_title("my-method") == "my-method"


def test_table1_rows_columns_num_and_overhead(table1_runs):
    table = build_table1(table1_runs)
    assert [r.title for r in table.rows] == ["Single-task", "Zero-shot", "Class-balanced", "ours (two-stage)"]
    assert table.columns == ["rc-a (accuracy)", "rc-i (accuracy)", "id (accuracy)", "Avg.", "Num.", "Overhead"]
    by = {r.method: r.values for r in table.rows}
    assert (by["single_task"]["Num."], by["single_task"]["Overhead"]) == (3, "100.0%")
    assert (by["zero_shot"]["Num."], by["zero_shot"]["Overhead"]) == (0, "-")
    assert (by["class_balanced"]["Num."], by["class_balanced"]["Overhead"]) == (0, "-")
    assert (by["two_stage"]["Num."], by["two_stage"]["Overhead"]) == (2, "50.0%")
    avg = by["two_stage"]["Avg."]
    assert avg.value == pytest.approx((0.8 + 0.8 + 0.7) / 3) and avg.low <= avg.value <= avg.high
    assert table.rows[-1].checkpoints == ["ck-ours"]


def test_table1_markdown_marks_qualified_cells(table1_runs):
    md = build_table1(table1_runs).to_markdown()
    lines = md.splitlines()
    header = next(ln for ln in lines if ln.startswith("| Method"))
    assert header == "| Method | rc-a (accuracy) | rc-i (accuracy) | id (accuracy) | Avg. | Num. | Overhead |"
    ours = next(ln for ln in lines if ln.startswith("| ours (two-stage)"))
    cells = [c.strip() for c in ours.strip("|").split("|")]
    assert cells[1].startswith("**80.0**✓ (") and cells[2].startswith("**80.0**✓ (")
    assert cells[3].startswith("70.0 (") and "✓" not in cells[3]
    assert cells[-2:] == ["2", "50.0%"]
    single = next(ln for ln in lines if ln.startswith("| Single-task"))
    assert "✓" not in single and "**" not in single  # the reference row is not gated
    assert "qualified" in md  # the legend


def test_table1_json(table1_runs):
    data = json.loads(render_json([build_table1(table1_runs)]))
    rows = {r["method"]: r for r in data[0]["rows"]}
    cell = rows["two_stage"]["values"]["id (accuracy)"]
    assert cell["qualified"] is False and cell["verdict"] == "not qualified" and cell["value"] == pytest.approx(0.7)
    assert rows["two_stage"]["values"]["rc-a (accuracy)"]["ratio"] == pytest.approx(1.0)
    assert rows["single_task"]["values"]["Overhead"] == "100.0%"


def test_partial_runs_show_na_and_a_note(hotel, table1_runs):
    partial = table1_runs + [RunResult("unimax", "classification", {"rc-a": cls_eval(hotel, "rc-a", answers(0.8, 0))})]
    table = build_table1(partial)
    row = next(r for r in table.rows if r.method == "unimax")
    assert row.values["rc-i (accuracy)"] is None and "| n/a |" in table.to_markdown()
    assert any("1 of 3 tasks" in n for n in table.notes)


def test_task_in_two_runs_of_one_method_is_ambiguous(hotel, table1_runs):
    extra = RunResult("two_stage", "again", {"rc-a": cls_eval(hotel, "rc-a", answers(0.8, 0))})
    with pytest.raises(ValidationError, match="two runs of one method"):
        build_table1(table1_runs + [extra])


def test_models_get_their_own_rows_and_baselines(hotel, table1_runs):
    other = [RunResult(r.method, r.group, r.evals, r.checkpoint, model="qwen") for r in table1_runs]
    mine = [RunResult(r.method, r.group, r.evals, r.checkpoint, model="llama") for r in table1_runs]
    md = build_table1(mine + other).to_markdown()
    assert "| Model | Method |" in md and md.count("| qwen |") == 4


def test_runs_round_trip(table1_runs):
    run = table1_runs[-1]
    back = RunResult.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back.to_dict() == run.to_dict()


def test_average_estimate(hotel, base):
    evals = [cls_eval(hotel, n, base[n]) for n in CLS]
    avg = average_estimate(evals)
    assert avg.value == pytest.approx(0.8) and avg.low < 0.8 < avg.high
    # averaging three independent tasks narrows the interval of one
    assert avg.high - avg.low < evals[0].value.high - evals[0].value.low
    # the same tasks in another order (Table 2 lists them differently) give the same interval
    again = average_estimate(evals[::-1])
    assert (again.value, again.low, again.high) == pytest.approx((avg.value, avg.low, avg.high))


def test_table2_generation_classification_and_brackets(hotel, base, table1_runs):
    gen_base = [0.5] * N
    runs = [r for r in table1_runs if r.method == "single_task"]
    runs.append(RunResult("single_task", "cs", {"cs": gen_eval(hotel, gen_base)}))
    mixed = {n: cls_eval(hotel, n, degrade(base[n], 40)) for n in CLS}  # classification suffers in the mixture
    mixed["cs"] = gen_eval(hotel, gen_base)  # generation holds
    runs.append(RunResult("two_stage", "all", mixed, checkpoint="ck-mixed"))
    table = build_table2(runs, classification_runs=table1_runs)
    assert table.columns == ["Generation (ROUGE-L)", "Generation (EM)", "Classification", "Avg.", "Num.", "Overhead"]
    assert [r.title for r in table.rows] == ["Single-task", "ours (two-stage)"]
    single, ours = table.rows
    assert single.values["Num."] == 4 and single.values["Overhead"] == "100.0%"
    assert ours.values["Num."] == 1 and ours.values["Overhead"] == "100.0%"  # only the generation task qualifies
    assert ours.values["Classification"].value == pytest.approx(0.7)
    assert ours.values["Avg."].value == pytest.approx((0.7 * 3 + 0.5) / 4)
    assert ours.brackets["Classification"].value == pytest.approx((0.8 + 0.8 + 0.7) / 3)
    assert ours.brackets["Num."] == 2
    md = render_markdown([table], header="# Reproduction")
    line = next(ln for ln in md.splitlines() if ln.startswith("| ours"))
    assert "**50.0**✓" in line and line.rstrip(" |").endswith("100.0%") and "1 [2]" in line
    assert md.startswith("# Reproduction")


def test_qualification_lines_say_where_the_line_lies(table1_runs):
    lines = qualification_lines(table1_runs)
    assert any(ln.startswith("ours (two-stage): id:") and "not qualified" in ln for ln in lines)
    assert not any(ln.startswith("Single-task") for ln in lines)
