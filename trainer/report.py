"""The paper's tables, assembled from finished runs (Markdown and JSON).

A *run* is one trained model (or the untuned base model) and its dev
evaluations: `RunResult(method, group, evals, checkpoint)`. A method may have
several runs (single-task: one per task; a task filter: one per taxonomy
group). The tables only read runs; they never train or score, so a benchmark
can assemble them from whatever runs have finished so far.

Table 1 (paper Table 1): rows are methods, columns each task's primary metric
x100 with its 95% interval, Avg. (the macro average over tasks, its interval
from per-task bootstraps averaged), Num. (qualified tasks) and Overhead
(1 / most qualified tasks on one model). Qualification compares each cell with
the single-task run of the same task (trainer.qualify); qualified cells are
bold with a check mark, as the paper shades them.

Table 2 (paper Table 2): a generation task added to the mixture. Columns:
Generation (ROUGE-L, and exact match beside it), Classification (the average
over classification tasks), Avg., Num., Overhead; in brackets, the same
method's numbers when trained on the classification tasks alone (its Table 1
runs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtserve.errors import ValidationError
from mtserve.tasks import Taxonomy
from trainer.evaluate import TaskEval
from trainer.metrics import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Estimate,
    bootstrap_distribution,
    percentile_interval,
)
from trainer.qualify import THRESHOLD, Qualification, Verdict, format_overhead, num_qualified, overhead, qualify

# Canonical method keys, in the paper's row order, with their titles.
METHODS: dict[str, str] = {
    "single_task": "Single-task",
    "zero_shot": "Zero-shot",
    "trivial": "Trivial (majority)",
    "instance_balanced": "Instance-balanced",
    "class_balanced": "Class-balanced",
    "temperature": "Temperature-scaled",
    "unimax": "UniMax",
    "two_stage": "ours (two-stage)",
    "two_stage_compact": "ours (two-stage, compact suffixes)",
    "one_stage": "ours (w/o 2-stage)",
}
_ALIASES = {
    "ours": "two_stage",
    "ours_two_stage": "two_stage",
    "ours_wo_2_stage": "one_stage",
    "temperature_capped": "one_stage",  # stage 2 alone: temperature-scaled with cap K
    "few_shot": "zero_shot",
}
BASELINE = "single_task"
QUALIFIED_MARK, NOISE_MARK = "✓", "~"
LEGEND = (
    f"**bold** {QUALIFIED_MARK}: qualified (>= 99% of the single-task baseline, point estimates); "
    f"{NOISE_MARK}: the 95% paired-bootstrap interval of the ratio straddles 0.99 (within noise); "
    "(a-b): 95% percentile-bootstrap interval; metrics x100."
)


def method_key(name: str) -> str:
    """'Single-task', 'single_task' and 'single-task' name one method."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_").replace("(", "").replace(")", "").replace("/", "")
    return _ALIASES.get(key, key)


def method_title(name: str) -> str:
    return METHODS.get(method_key(name), name)


# -- runs -----------------------------------------------------------------------------


@dataclass
class RunResult:
    method: str  # a METHODS key (or any name: shown as given)
    group: str  # which model of the method: a task group name, or the task for single-task runs
    evals: dict[str, TaskEval]  # task name -> its dev evaluation
    checkpoint: str | None = None
    model: str = ""  # the base model, e.g. "SmolLM2-135M"; tables split by it
    extra: dict[str, Any] = field(default_factory=dict)  # job settings, timings, ...

    @property
    def key(self) -> str:
        return method_key(self.method)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "group": self.group,
            "checkpoint": self.checkpoint,
            "model": self.model,
            "extra": dict(self.extra),
            "evals": {name: ev.to_dict() for name, ev in self.evals.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        return cls(
            method=str(data["method"]),
            group=str(data["group"]),
            evals={str(k): TaskEval.from_dict(v) for k, v in data["evals"].items()},
            checkpoint=data.get("checkpoint"),
            model=str(data.get("model", "")),
            extra=dict(data.get("extra") or {}),
        )


# -- table structure --------------------------------------------------------------------


@dataclass
class Cell:
    estimate: Estimate
    qualification: Qualification | None = None  # None on the baseline row

    def to_dict(self) -> dict[str, Any]:
        out = self.estimate.to_dict()
        if self.qualification is not None:
            q = self.qualification.to_dict()
            out.update({k: q[k] for k in ("qualified", "verdict", "ratio", "ratio_low", "ratio_high", "p_pass")})
        return out


@dataclass
class Row:
    method: str
    title: str
    model: str
    values: dict[str, Cell | Estimate | int | float | str | None]  # column -> content
    checkpoints: list[str]
    brackets: dict[str, Estimate | int | None] = field(default_factory=dict)  # Table 2: classification-only numbers


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self, digits: int = 1) -> str:
        show_model = len({r.model for r in self.rows}) > 1
        head = (["Model"] if show_model else []) + ["Method"] + self.columns
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            cells = [_md(row.values.get(c), row.brackets.get(c), digits) for c in self.columns]
            lines.append("| " + " | ".join(([row.model] if show_model else []) + [row.title] + cells) + " |")
        lines += ["", LEGEND] + [f"{n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": list(self.columns),
            "notes": list(self.notes),
            "rows": [
                {
                    "method": r.method,
                    "title": r.title,
                    "model": r.model,
                    "checkpoints": r.checkpoints,
                    "values": {c: _jsonable(v) for c, v in r.values.items()},
                    **({"brackets": {c: _jsonable(v) for c, v in r.brackets.items()}} if r.brackets else {}),
                }
                for r in self.rows
            ],
        }


def _md(value: Any, bracket: Any, digits: int) -> str:
    text = _md_value(value, digits)
    if bracket is not None:
        text += f" [{_md_value(bracket, digits).replace('**', '')}]"
    return text


def _md_value(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, Cell):
        est, q = value.estimate, value.qualification
        number = f"{est.value * 100:.{digits}f}"
        interval = f"({est.low * 100:.{digits}f}-{est.high * 100:.{digits}f})"
        if q is None:
            return f"{number} {interval}"
        mark = (QUALIFIED_MARK if q.qualified else "") + (NOISE_MARK if q.within_noise else "")
        number = f"**{number}**" if q.qualified else number
        return f"{number}{mark} {interval}"
    if isinstance(value, Estimate):
        return value.format(digits=digits)
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Cell):
        return value.to_dict()
    if isinstance(value, Estimate):
        return value.to_dict()
    return value


# -- assembling ------------------------------------------------------------------------


def _by_model(runs: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    out: dict[str, list[RunResult]] = {}
    for run in runs:
        out.setdefault(run.model, []).append(run)
    return out


def _method_order(runs: Sequence[RunResult]) -> list[str]:
    present = []
    for run in runs:
        if run.key not in present:
            present.append(run.key)
    known = [m for m in METHODS if m in present]
    return known + [m for m in present if m not in METHODS]


def _evals_of(runs: Sequence[RunResult], tasks: Sequence[str]) -> dict[str, tuple[TaskEval, RunResult]]:
    """task -> (evaluation, its run) over a method's runs; a task in two runs is ambiguous."""
    out: dict[str, tuple[TaskEval, RunResult]] = {}
    for run in runs:
        for name, ev in run.evals.items():
            if name not in tasks:
                continue
            if name in out:
                raise ValidationError(
                    f"runs({run.method})",
                    f"task {name!r} is evaluated in two runs of one method (groups {out[name][1].group!r} and {run.group!r});"
                    " pass the runs of one experiment only",
                    show_value=False,
                )
            out[name] = (ev, run)
    return out


def average_estimate(
    evals: Sequence[TaskEval], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL
) -> Estimate:
    """Macro average of the tasks' primary metrics. Tasks have disjoint
    examples, so each is resampled on its own (seed + its position in task-name
    order, so that the same tasks give the same interval in every table) and
    the interval is the percentile interval of the averaged resamples."""
    if not evals:
        raise ValidationError("average", "needs at least one task", 0)
    ordered = sorted(evals, key=lambda ev: ev.task)
    samples = np.mean(
        [bootstrap_distribution([ev.statistic()], n_resamples=n_resamples, seed=seed + k)[0] for k, ev in enumerate(ordered)], axis=0
    )
    low, high = percentile_interval(samples, level)
    return Estimate(
        value=float(np.mean([ev.value.value for ev in evals])), low=low, high=high,
        n=sum(ev.n for ev in evals), level=level, method="percentile bootstrap, per task",
    )


@dataclass
class _MethodSummary:
    cells: dict[str, Cell]
    qualified_per_model: list[list[str]]
    checkpoints: list[str]


def _summarize_method(
    runs: Sequence[RunResult], tasks: Sequence[str], baselines: Mapping[str, TaskEval], *, is_baseline: bool, threshold: float
) -> _MethodSummary:
    found = _evals_of(runs, tasks)
    cells: dict[str, Cell] = {}
    qualified: list[list[str]] = [[] for _ in runs]  # per run: one deployed model each
    for name in tasks:
        if name not in found:
            continue
        ev, run = found[name]
        q = qualify(ev, baselines[name], threshold=threshold) if name in baselines else None
        if q is not None and q.qualified:
            qualified[next(i for i, r in enumerate(runs) if r is run)].append(name)
        cells[name] = Cell(ev.value, None if is_baseline else q)
    return _MethodSummary(cells=cells, qualified_per_model=qualified, checkpoints=[r.checkpoint for r in runs if r.checkpoint])


def _baselines(runs: Sequence[RunResult], tasks: Sequence[str], baseline: str) -> dict[str, TaskEval]:
    return {name: ev for name, (ev, _) in _evals_of([r for r in runs if r.key == method_key(baseline)], tasks).items()}


def _task_order(runs: Sequence[RunResult], baseline: str) -> list[str]:
    """Tasks in order of first appearance, the baseline's runs first."""
    ordered: list[str] = []
    for run in sorted(runs, key=lambda r: r.key != method_key(baseline)):
        for name in run.evals:
            if name not in ordered:
                ordered.append(name)
    return ordered


def build_table1(
    runs: Sequence[RunResult],
    *,
    tasks: Sequence[str] | None = None,
    baseline: str = BASELINE,
    threshold: float = THRESHOLD,
    title: str = "Table 1: multi-task methods against single-task fine-tuning (dev)",
) -> Table:
    """One row per (model, method); see the module docstring for the columns."""
    tasks = list(tasks) if tasks is not None else _task_order(runs, baseline)
    metric_of: dict[str, str] = {}
    for run in runs:
        for name, ev in run.evals.items():
            metric_of.setdefault(name, ev.primary)
    columns = [f"{t} ({metric_of.get(t, '?')})" for t in tasks] + ["Avg.", "Num.", "Overhead"]
    rows: list[Row] = []
    notes: list[str] = []
    for model, model_runs in _by_model(runs).items():
        baselines = _baselines(model_runs, tasks, baseline)
        lacking = [t for t in tasks if t not in baselines]
        if lacking:
            notes.append(f"{model or 'model'}: no single-task baseline yet for {lacking}; their cells are not gated.")
        for key in _method_order(model_runs):
            mine = [r for r in model_runs if r.key == key]
            summary = _summarize_method(mine, tasks, baselines, is_baseline=key == method_key(baseline), threshold=threshold)
            values: dict[str, Any] = {col: summary.cells.get(t) for col, t in zip(columns, tasks)}
            found = _evals_of(mine, tasks)
            evals = [found[t][0] for t in tasks if t in found]
            avg = average_estimate(evals) if evals else None
            if evals and len(evals) < len(tasks):
                notes.append(f"{method_title(key)}: Avg. over the {len(evals)} of {len(tasks)} tasks evaluated so far.")
            values["Avg."] = avg
            values["Num."] = num_qualified(summary.qualified_per_model)
            values["Overhead"] = format_overhead(overhead(summary.qualified_per_model))
            rows.append(Row(key, method_title(key), model, values, summary.checkpoints))
    return Table(title, columns, rows, notes)


def _is_generation(ev: TaskEval) -> bool:
    return ev.taxonomy == Taxonomy.GENERATION.value


def build_table2(
    runs: Sequence[RunResult],
    *,
    classification_runs: Sequence[RunResult] = (),
    baseline: str = BASELINE,
    threshold: float = THRESHOLD,
    title: str = "Table 2: adding a generation task to the mixture (dev)",
) -> Table:
    """Rows: methods whose runs mix generation and classification tasks (and
    the single-task baseline). Brackets: the same method's classification-only
    runs, when given."""
    tasks = _task_order(runs, baseline)
    kinds = {name: _is_generation(ev) for run in runs for name, ev in run.evals.items()}
    gen_tasks = [t for t in tasks if kinds[t]]
    cls_tasks = [t for t in tasks if not kinds[t]]
    columns = ["Generation (ROUGE-L)", "Generation (EM)", "Classification", "Avg.", "Num.", "Overhead"]
    rows: list[Row] = []
    notes: list[str] = []
    if not gen_tasks:
        notes.append("No generation task in these runs.")
    for model, model_runs in _by_model(runs).items():
        baselines = _baselines(model_runs, tasks, baseline)
        side = [r for r in classification_runs if r.model == model]
        side_baselines = {**baselines, **_baselines(side, cls_tasks, baseline)}
        for key in _method_order(model_runs):
            mine = [r for r in model_runs if r.key == key]
            is_base = key == method_key(baseline)
            summary = _summarize_method(mine, tasks, baselines, is_baseline=is_base, threshold=threshold)
            found = _evals_of(mine, tasks)
            gen = [found[t][0] for t in gen_tasks if t in found]
            cls = [found[t][0] for t in cls_tasks if t in found]
            values: dict[str, Any] = {
                "Generation (ROUGE-L)": (summary.cells.get(gen_tasks[0]) if len(gen) == 1 else (average_estimate(gen) if gen else None)),
                "Generation (EM)": (_average_metric(gen, "exact_match") if gen else None),
                "Classification": average_estimate(cls) if cls else None,
                "Avg.": average_estimate(gen + cls) if gen or cls else None,
                "Num.": num_qualified(summary.qualified_per_model),
                "Overhead": format_overhead(overhead(summary.qualified_per_model)),
            }
            brackets: dict[str, Any] = {}
            alone = [r for r in side if r.key == key]
            if alone and not is_base:
                s2 = _summarize_method(alone, cls_tasks, side_baselines, is_baseline=False, threshold=threshold)
                cls_alone = [ev for ev, _ in _evals_of(alone, cls_tasks).values()]
                brackets["Classification"] = average_estimate(cls_alone) if cls_alone else None
                brackets["Num."] = num_qualified(s2.qualified_per_model)
            rows.append(Row(key, method_title(key), model, values, summary.checkpoints, brackets))
    notes.append("[bracketed]: the same method trained on the classification tasks alone (Table 1).")
    return Table(title, columns, rows, notes)


def _average_metric(evals: Sequence[TaskEval], metric: str) -> Estimate:
    """The mean of a secondary metric over tasks (e.g. exact match), with the
    interval from per-task bootstraps (in task-name order, as average_estimate)."""
    ordered = sorted(evals, key=lambda ev: ev.task)
    samples = np.mean(
        [bootstrap_distribution([ev.statistic(metric)], n_resamples=ev.n_resamples, seed=ev.seed + k)[0] for k, ev in enumerate(ordered)],
        axis=0,
    )
    low, high = percentile_interval(samples)
    return Estimate(
        value=float(np.mean([ev.metrics[metric].value for ev in evals])), low=low, high=high, n=sum(ev.n for ev in evals),
        method="percentile bootstrap, per task",
    )


# -- output -----------------------------------------------------------------------------


def render_markdown(tables: Iterable[Table], *, header: str = "", digits: int = 1) -> str:
    parts = [header.rstrip() + "\n"] if header else []
    parts += [t.to_markdown(digits) for t in tables]
    return "\n".join(parts)


def render_json(tables: Iterable[Table]) -> str:
    return json.dumps([t.to_dict() for t in tables], ensure_ascii=False, indent=2, allow_nan=False)


def qualification_lines(table_runs: Sequence[RunResult], *, baseline: str = BASELINE, threshold: float = THRESHOLD) -> list[str]:
    """One sentence per gated (method, task): where the 99% line lies in the noise."""
    lines: list[str] = []
    for model, model_runs in _by_model(table_runs).items():
        tasks = _task_order(model_runs, baseline)
        baselines = _baselines(model_runs, tasks, baseline)
        for key in _method_order(model_runs):
            if key == method_key(baseline):
                continue
            for name, (ev, _) in _evals_of([r for r in model_runs if r.key == key], tasks).items():
                if name in baselines:
                    q = qualify(ev, baselines[name], threshold=threshold)
                    lines.append(f"{(model + ' ') if model else ''}{method_title(key)}: {q.describe()}")
    return lines


__all__ = [
    "BASELINE",
    "METHODS",
    "Cell",
    "Row",
    "RunResult",
    "Table",
    "Verdict",
    "average_estimate",
    "build_table1",
    "build_table2",
    "method_key",
    "method_title",
    "qualification_lines",
    "render_json",
    "render_markdown",
]
