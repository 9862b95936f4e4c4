"""The multi-task runs: one model per task group, trained with the method's
stages, evaluated on every task's dev set and qualified against the
baselines (the 99% rule with a paired-bootstrap interval, trainer.qualify)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtserve.tasks import Task
from trainer import checkpoint as ck
from trainer.evaluate import TaskEval, trivial_baseline
from trainer.pipeline import cache
from trainer.pipeline.context import Context
from trainer.pipeline.model import encode_tasks, load_model, loop_settings, make_evaluator, score_dev, task_records
from trainer.pipeline.plan import plan_stages
from trainer.qualify import qualify
from trainer.results import (
    CheckpointRef,
    GroupModel,
    MetricEstimate,
    MultiTaskPoint,
    MultiTaskRun,
    MultiTaskSelection,
    SingleTaskRun,
    trivial_summary,
)
from trainer.train import Trainer, TrainProgress, TrainSet, barrier


def run_group(
    ctx: Context, base_dir: Path, group: str, tasks: Sequence[Task], baselines: Mapping[str, SingleTaskRun], high: Sequence[str]
) -> GroupModel:
    names = [t.name for t in tasks]
    if len(tasks) == 1 and names[0] in baselines:
        # A group of one task is its single-task model: training it again would
        # only reproduce the baseline at the cost of a run.
        b = baselines[names[0]]
        ctx.emit({"event": "group_reuses_baseline", "group": group, "task": names[0], "checkpoint": b.checkpoint.id})
        return GroupModel(group, b)
    mine = {n: b for n, b in baselines.items() if n in names}
    return GroupModel(group, run_multi_task(ctx, base_dir, group, tasks, mine, [h for h in high if h in names]))


def run_multi_task(
    ctx: Context, base_dir: Path, group: str, tasks: Sequence[Task], baselines: Mapping[str, SingleTaskRun], high: Sequence[str]
) -> MultiTaskRun:
    """One model for a group of tasks. Keyed on the resolved stages (rates,
    step counts, lr), so equivalent spellings of the mixture settings share a
    run."""
    spec = ctx.spec
    style = cache.prompt_style(ctx, tasks, multitask=True)
    data = encode_tasks(ctx, ctx.tokenizer(base_dir), tasks, style)
    sizes = {t.name: len(data[t.name]) for t in tasks}
    stages, notes = plan_stages(spec, spec.method, sizes, high, ctx.per_step, lr=ctx.lr)
    payload = {
        "kind": "multi_task", "name": spec.name, "group": group, "method": spec.method, "tasks": [t.to_dict() for t in tasks],
        "data": {t.name: ctx.data_identity(t.name) for t in tasks}, "base": ck.base_identity(base_dir),
        "stages": [p.to_dict() for p in stages], "max_train_examples": spec.max_train_examples,
        "eval": cache.eval_key(ctx, multitask_every_steps=spec.eval.multitask_every_steps),
        "baselines": {t: b.run_id for t, b in sorted(baselines.items())}, "world": cache.world_key(ctx), **cache.hyper(ctx, style),
    }
    run = cache.open_run(ctx, "mt", f"{spec.name}-{group}", payload)
    if run.action == "cached":
        run.emit({"event": "run_cached"})
        return MultiTaskRun.from_dict(cache.stored(ctx, run.run_id))
    result = None
    with cache.run_lock(ctx, run.run_id):
        model, tokenizer = load_model(ctx, base_dir, lora=spec.finetune == "lora")
        run.emit({"event": "run_started", "action": run.action, "group": group, "tasks": [t.name for t in tasks],
                  "stages": [p.to_dict() for p in stages], "notes": notes, "high": list(high)})
        evaluator = make_evaluator(ctx, tokenizer, tasks, style, {t: b.dev for t, b in baselines.items()}, run.run_id, run.emit)
        trainer = Trainer(model, tokenizer, loop_settings(spec), ctx.store.dir(run.run_id), emit=run.emit, evaluator=evaluator, dist=ctx.dist)
        progress = trainer.run(stages, data, resume=run.action == "resume")
        if ctx.dist.main:
            result = _finish(ctx, run, base_dir, group, tasks, model, tokenizer, progress, data, baselines, high, notes)
        barrier(ctx.dist)
    return result if result is not None else MultiTaskRun.from_dict(cache.stored(ctx, run.run_id))


def _finish(
    ctx: Context, run: cache.OpenRun, base_dir: Path, group: str, tasks: Sequence[Task], model: Any, tokenizer: Any,
    progress: TrainProgress, data: Mapping[str, TrainSet], baselines: Mapping[str, SingleTaskRun], high: Sequence[str],
    notes: dict[str, Any],
) -> MultiTaskRun:
    spec = ctx.spec
    style = cache.prompt_style(ctx, tasks, multitask=True)
    best = progress.best
    assert best is not None and best.file is not None  # the last stage evaluates at its end and selects
    payload = ck.read_json(ctx.store.dir(run.run_id) / "evals" / best.file)
    evals = {t.name: TaskEval.from_dict(payload[t.name]) for t in tasks}
    quals = {n: qualify(ev, baselines[n].dev, degenerate_baseline=bool(baselines[n].degenerate)) for n, ev in evals.items() if n in baselines}
    qualified = sorted(n for n, q in quals.items() if q.qualified)
    selected = MultiTaskSelection(best.stage, best.step)
    precision = cache.precision_record(ctx)
    metrics = {
        "split": "dev",
        "dev": {n: MetricEstimate.of(ev).to_dict() for n, ev in evals.items()},
        "baseline": {n: {"run": b.run_id, "checkpoint": b.checkpoint.id, "selected": b.selected.label, **MetricEstimate.of(b.dev).to_dict()}
                     for n, b in baselines.items()},
        "zero_shot": {n: MetricEstimate.of(b.zero_shot).to_dict() for n, b in baselines.items()},
        "qualification": {n: q.to_dict() for n, q in quals.items()},
        "qualified": qualified,
        "selected": selected.to_dict(),
        "trivial": {t.name: trivial_summary(trivial_baseline(t, ctx.train_examples(t.name), ctx.dev_examples(t.name))) for t in tasks},
        "dev_selection": {t.name: ctx.dev_selection(t.name).to_dict() for t in tasks},
        "eval_dtype": ctx.eval_dtype,
    }
    training = {
        "method": spec.method, "group": group, "job": spec.name, "run_id": run.run_id, "run_key": run.key,
        "stages": [s.to_dict() for s in progress.stages], "high_resource": sorted(high), "mixture": spec.mixture.model_dump(mode="json"),
        "notes": notes, "steps": progress.steps, "tokens": progress.tokens, "seconds": progress.seconds,
        "data": {t.name: cache.data_record(ctx, t.name, data) for t in tasks}, **cache.hyper(ctx, style), "precision": precision.to_dict(),
        "versions": cache.versions(),
        "history": [{"stage": h.stage, "step": h.step, "summary": None if h.summary is None else h.summary.to_dict()} for h in progress.history],
    }
    checkpoint_id = f"{spec.name}-{group}-{run.key[:12]}"
    path = ck.write_checkpoint(
        ctx.checkpoints_root, checkpoint_id, model, tokenizer, base_dir=base_dir, lora=spec.finetune == "lora",
        tasks=task_records(tasks), metrics=metrics, training=training,
        description=f"{spec.method} multi-task model for group {group} of job {spec.name}: {len(qualified)}/{len(tasks)} tasks qualified",
    )
    test = score_dev(ctx, model, tokenizer, tasks, style, split="test", label=checkpoint_id) if spec.eval.test else None
    result = MultiTaskRun(
        run_id=run.run_id, key=run.key, job=spec.name, group=group, method=spec.method, tasks=[t.name for t in tasks], high=sorted(high),
        base=cache.base_ref(base_dir), checkpoint=CheckpointRef(checkpoint_id, str(path)), stages=progress.stages, selected=selected,
        dev=evals, qualification=quals, qualified=qualified, test=test, steps=progress.steps, tokens=progress.tokens,
        seconds=progress.seconds, precision=precision,
        history=[MultiTaskPoint(h.stage, h.step, h.epochs, None if h.summary is None else h.summary.values) for h in progress.history],
    )
    cache.finish(ctx, run, result.to_dict())
    run.emit({"event": "run_finished", "checkpoint": str(path), "qualified": qualified,
              "dev": {n: ev.value.value for n, ev in evals.items()}})
    return result
