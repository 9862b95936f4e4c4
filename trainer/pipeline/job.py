"""A whole job: stage 0, baselines, resource grouping, one multi-task run per
task group, and the job's result: a row per task, a table in the paper's
layout and a report with a dev curve per task."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence

from mtserve.config import Settings
from mtserve.tasks import Task
from trainer import checkpoint as ck
from trainer.evaluate import is_degenerate, trivial_baseline
from trainer.job import JobSpec
from trainer.pipeline.baselines import high_resource, run_single_task
from trainer.pipeline.context import Context, Emit, build_context
from trainer.pipeline.multitask import run_group
from trainer.pipeline.plan import group_tasks
from trainer.pipeline.stage0 import run_stage0
from trainer.qualify import json_ratio, overhead
from trainer.results import GroupModel, JobResult, MetricEstimate, MultiTaskRun, SingleTaskRun, TaskRow
from trainer.runs import EventLog

log = logging.getLogger(__name__)


def run_job(
    spec: JobSpec,
    *,
    settings: Settings | None = None,
    emit: Emit | None = None,
    resume: bool = False,
    restart: bool = False,
) -> JobResult:
    """Run a whole job: stage 0, baselines, grouping, multi-task runs,
    qualification. Every piece is a cached run; `resume` continues interrupted
    runs, `restart` discards their state."""
    started = time.monotonic()
    job_log_path = spec.runs_path / f"job-{spec.name}.events.jsonl"
    job_emit = EventLog(job_log_path if _is_main() else None, emit, job=spec.name)
    job_emit({"event": "job_started", "spec": spec.to_dict()})
    try:
        ctx = build_context(spec, settings=settings, emit=job_emit, resume=resume, restart=restart)
        base_dir = ctx.base_dir
        if spec.stage0 is not None:
            base_dir = run_stage0(ctx, base_dir)
        baselines: dict[str, SingleTaskRun] = {}
        if spec.baselines.train or spec.method == "single_task":
            for task in ctx.tasks:
                baselines[task.name] = run_single_task(ctx, base_dir, task)
        high = high_resource(ctx, baselines)
        groups: list[GroupModel] = []
        if spec.method != "single_task":
            for group, tasks in group_tasks(ctx.tasks, spec.task_filter.group_by).items():
                groups.append(run_group(ctx, base_dir, group, tasks, baselines, high))
        result = job_result(ctx, baselines, groups, time.monotonic() - started)
        if _is_main():
            result.report_files = write_job_report(ctx, result, baselines)
            ck.write_json(spec.runs_path / f"job-{spec.name}.result.json", result.to_dict())
        job_emit({"event": "job_finished", "checkpoints": result.checkpoints, "num_qualified": result.num_qualified,
                  "overhead": result.overhead, "seconds": result.seconds})
        return result
    except Exception as exc:
        job_emit({"event": "job_failed", "error": f"{type(exc).__name__}: {exc}"})
        raise


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def job_result(ctx: Context, baselines: Mapping[str, SingleTaskRun], groups: Sequence[GroupModel], seconds: float) -> JobResult:
    spec = ctx.spec
    group_of = {t: g for g in groups for t in g.tasks}
    rows = [task_row(ctx, task, baselines.get(task.name), group_of.get(task.name)) for task in ctx.tasks]
    if spec.method == "single_task":
        models = [[t] for t in baselines]
        checkpoints = [b.checkpoint.path for b in baselines.values()]
    else:
        models = [g.qualified for g in groups]
        checkpoints = [g.run.checkpoint.path for g in groups]
    qualified = sorted({t for m in models for t in m})
    return JobResult(
        job=spec.name, method=spec.method, rows=rows, groups=list(groups), checkpoints=checkpoints, overhead=overhead(models),
        num_qualified=len(qualified),
        runs=[b.run_id for b in baselines.values()] + [g.run.run_id for g in groups if not g.reused_baseline],
        bad_lines=ctx.bad_lines[:1000], seconds=seconds, table_markdown=_table(ctx, baselines, groups),
    )


def task_row(ctx: Context, task: Task, baseline: SingleTaskRun | None, group: GroupModel | None) -> TaskRow:
    """A task's row: its trivial baseline always, its baseline and its group's model when the job has them."""
    # The trivial baseline stands beside every task, with or without a trained baseline.
    trivial = baseline.trivial if baseline is not None and baseline.trivial is not None else trivial_baseline(
        task, ctx.train_examples(task.name), ctx.dev_examples(task.name))
    row = TaskRow(
        task=task.name, task_version=task.version, definition_hash=task.content_hash(), trivial=trivial,
        dev_warnings=list(ctx.dev_selection(task.name).warnings), group=group.group if group else None,
        checkpoint=group.run.checkpoint.id if group else (baseline.checkpoint.id if baseline else None),
    )
    if baseline is not None:
        row.metric = baseline.dev.primary
        row.zero_shot, row.baseline = MetricEstimate.of(baseline.zero_shot), MetricEstimate.of(baseline.dev)
        row.baseline_checkpoint, row.baseline_selected = baseline.checkpoint.id, baseline.selected.label
        row.degenerate_baseline = is_degenerate(baseline.dev, trivial)
    if group is not None:
        ev = group.dev[task.name]
        row.metric, row.multi_task = ev.primary, MetricEstimate.of(ev)
        q = group.qualification.get(task.name)
        if q is not None:
            row.ratio, row.ratio_low, row.ratio_high = json_ratio(q.ratio), json_ratio(q.ratio_low), json_ratio(q.ratio_high)
            row.qualified, row.verdict = q.qualified, q.label
        elif group.reused_baseline:
            row.ratio, row.qualified, row.verdict = 1.0, True, "single-task model"
    # What `--promote` does with the row (trainer.promote routes the point rule's qualified tasks).
    row.routes_on_promote = bool(row.qualified) if ctx.spec.method != "single_task" else baseline is not None
    return row


def write_job_report(ctx: Context, result: JobResult, baselines: Mapping[str, SingleTaskRun]) -> dict[str, str]:
    """`<runs_dir>/job-<name>.report/`: report.md (the result table and one dev
    curve per task) and a PNG per task: the single-task baseline's dev metric
    over its steps, the multi-task model's, and dashed lines for the selected
    baseline, the trivial baseline and zero-shot, so a reader sees learning
    instead of inferring it. Plots need the `curves` extra; without it the
    report still has its table."""
    from trainer.curves import plot_task_curve

    folder = ctx.spec.runs_path / f"job-{ctx.spec.name}.report"
    folder.mkdir(parents=True, exist_ok=True)
    group_of = {t: g for g in result.groups for t in g.tasks}
    files: dict[str, str] = {}
    lines = [f"# Job report: {ctx.spec.name}", "", result.table_markdown or "", ""]
    for row in result.rows:
        name = row.task
        curves: dict[str, list[tuple[int, float]]] = {}
        b = baselines.get(name)
        if b is not None:
            curves["single-task"] = [(h.step, h.value) for h in b.history]
        g = group_of.get(name)
        if g is not None and isinstance(g.run, MultiTaskRun):
            offsets, total = {}, 0
            for stage in g.run.stages:  # each stage counts its steps from 0: place them end to end
                offsets[stage.plan.name] = total
                total += stage.steps_done
            curves[f"multi-task ({ctx.spec.method})"] = [
                (offsets.get(h.stage, 0) + h.step, h.values[name]) for h in g.run.history if h.values and h.values.get(name) is not None
            ]
        levels = {"baseline": row.baseline.estimate.value if row.baseline else None, "trivial": row.trivial.value,
                  "zero-shot": row.zero_shot.estimate.value if row.zero_shot else None}
        try:
            path = plot_task_curve(folder / f"{name}.png", name, row.metric or "", curves, lines=levels,
                                   title=f"{name}: dev {row.metric} ({ctx.spec.name})")
        except Exception as exc:  # noqa: BLE001 - a plot is a view of the result, never its cause of failure
            log.warning("could not plot %s: %s", name, exc)
            path = None
        verdict = row.verdict or ("degenerate baseline" if row.degenerate_baseline else "-")
        lines.append(f"## {name}: {verdict}")
        lines.append("")
        if path is not None:
            files[name] = str(path)
            lines += [f"![{name} dev curve]({path.name})", ""]
        for warning in row.dev_warnings:
            lines += [f"- warning: {warning}"]
        lines.append("")
    report = folder / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    files["report"] = str(report)
    return files


def _table(ctx: Context, baselines: Mapping[str, SingleTaskRun], groups: Sequence[GroupModel]) -> str:
    """The paper-style Table 1 rows of this job (zero-shot, single-task, the method)."""
    from trainer.report import RunResult, build_table1

    runs = []
    if baselines:
        runs.append(RunResult("zero_shot", "base", {n: b.zero_shot for n, b in baselines.items()}))
        for n, b in baselines.items():
            runs.append(RunResult("single_task", n, {n: b.dev}, checkpoint=b.checkpoint.id))
    if ctx.spec.method != "single_task":
        for g in groups:
            runs.append(RunResult(ctx.spec.method, g.group, dict(g.dev), checkpoint=g.run.checkpoint.id))
    if not runs:
        return ""
    try:
        style = ", compact suffixes" if ctx.spec.method != "single_task" and ctx.spec.mixture.suffixes == "compact" else ""
        return build_table1(runs, title=f"Job {ctx.spec.name}: {ctx.spec.method}{style} (dev)").to_markdown()
    except Exception as exc:  # noqa: BLE001 - the table is a convenience; the rows above are the result
        log.warning("could not build the table: %s", exc)
        return ""
