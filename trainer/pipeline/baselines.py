"""Single-task baselines and the resource grouping read from them.

A baseline is the training loop on one task, evaluated on dev before the
first update (zero-shot) and every eval.every_steps steps; the best
evaluation is kept, which may be the untuned base model itself (then no copy
is written and the baseline is labelled so). Its dev curve gives the epoch at
which the task saturates: high-resource when that is after more than
resources.saturation_epochs epochs (section 4.2)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtserve.checkpoints import read_manifest
from mtserve.tasks import Task
from trainer import checkpoint as ck
from trainer.evaluate import TaskEval, is_degenerate, trivial_baseline
from trainer.pipeline import cache
from trainer.pipeline.context import Context
from trainer.pipeline.model import encode_tasks, load_model, loop_settings, make_evaluator, score_dev, task_records
from trainer.pipeline.plan import baseline_steps, saturation
from trainer.results import CheckpointRef, MetricEstimate, SingleTaskPoint, SingleTaskRun, SingleTaskSelection, trivial_summary
from trainer.train import Evaluation, StagePlan, Trainer, TrainProgress, TrainSet, barrier


def run_single_task(ctx: Context, base_dir: Path, task: Task) -> SingleTaskRun:
    """One task's baseline (see the module docstring).

    The run key holds the resolved plan (step count, lr, evaluation period,
    patience), not the settings that led to it: `baselines.epochs: 2` and the
    equal `baselines.steps` share a run, and a job's `max_steps` that does not
    bind changes nothing."""
    style = cache.prompt_style(ctx, [task], multitask=False)
    data = encode_tasks(ctx, ctx.tokenizer(base_dir), [task], style)
    steps, notes = baseline_steps(ctx.spec, len(data[task.name]), ctx.per_step)
    plan = [StagePlan("single", {task.name: 1.0}, steps, ctx.lr, strategy="single_task",
                      eval_every=ctx.spec.eval.every_steps, eval_at_start=True, eval_at_end=True, select_best=True,
                      patience=ctx.spec.eval.patience)]
    payload = {
        "kind": "single_task", "task": task.to_dict(), "data": ctx.data_identity(task.name), "base": ck.base_identity(base_dir),
        "max_train_examples": ctx.spec.max_train_examples, "stages": [p.to_dict() for p in plan], "eval": cache.eval_key(ctx),
        "world": cache.world_key(ctx), **cache.hyper(ctx, style),
    }
    run = cache.open_run(ctx, "st", task.name, payload)
    if run.action == "cached":
        run.emit({"event": "run_cached"})
        return SingleTaskRun.from_dict(cache.stored(ctx, run.run_id))
    result = None
    with cache.run_lock(ctx, run.run_id):
        model, tokenizer = load_model(ctx, base_dir, lora=ctx.spec.finetune == "lora")
        run.emit({"event": "run_started", "action": run.action, "tasks": [task.name], "stages": [p.to_dict() for p in plan], "notes": notes})
        evaluator = make_evaluator(ctx, tokenizer, [task], style, None, run.run_id, run.emit)
        trainer = Trainer(model, tokenizer, loop_settings(ctx.spec), ctx.store.dir(run.run_id), emit=run.emit, evaluator=evaluator, dist=ctx.dist)
        progress = trainer.run(plan, data, resume=run.action == "resume")
        if ctx.dist.main:
            result = _finish(ctx, run, base_dir, task, model, tokenizer, progress, data, notes)
        barrier(ctx.dist)
    return result if result is not None else SingleTaskRun.from_dict(cache.stored(ctx, run.run_id))


def _dev_value(entry: Evaluation, task: str) -> float:
    assert entry.summary is not None  # rank 0 evaluates, and only rank 0 finishes a run
    return entry.summary.values[task]


def _load_eval(ctx: Context, run: cache.OpenRun, entry: Evaluation, task: str) -> TaskEval:
    assert entry.file is not None
    return TaskEval.from_dict(ck.read_json(ctx.store.dir(run.run_id) / "evals" / entry.file)[task])


def _finish(
    ctx: Context, run: cache.OpenRun, base_dir: Path, task: Task, model: Any, tokenizer: Any, progress: TrainProgress,
    data: Mapping[str, TrainSet], notes: dict[str, Any],
) -> SingleTaskRun:
    best = progress.best
    assert best is not None  # the only stage selects its best evaluation, zero-shot included
    style = cache.prompt_style(ctx, [task], multitask=False)
    zero = _load_eval(ctx, run, progress.history[0], task.name)
    chosen = _load_eval(ctx, run, best, task.name)
    zero_shot = best.weights == "base"
    history = [SingleTaskPoint(h.step, h.epochs[task.name], _dev_value(h, task.name)) for h in progress.history]
    sat = saturation(history, ctx.spec.resources.saturation_epochs)
    epochs = best.epochs[task.name]
    selected = SingleTaskSelection(best.step, epochs, zero_shot,
                                   "zero-shot (the untuned base model beat every fine-tuned step on dev)" if zero_shot
                                   else f"fine-tuned, step {best.step} ({epochs:.2f} epochs)")
    trivial = trivial_baseline(task, ctx.train_examples(task.name), ctx.dev_examples(task.name))
    degenerate = is_degenerate(chosen, trivial)
    if degenerate:
        run.emit({"event": "degenerate_baseline", "task": task.name, "baseline": chosen.value.value, "trivial": trivial.value,
                  "rule": trivial.rule})
    precision = cache.precision_record(ctx)
    metrics = {"split": "dev", "dev": {task.name: MetricEstimate.of(chosen).to_dict()}, "zero_shot": {task.name: MetricEstimate.of(zero).to_dict()},
               "selected": selected.to_dict(), "trivial": {task.name: trivial_summary(trivial)}, "degenerate": {task.name: degenerate},
               "dev_selection": {task.name: ctx.dev_selection(task.name).to_dict()}, "eval_dtype": ctx.eval_dtype}
    training = {
        "method": "single_task", "run_id": run.run_id, "run_key": run.key, "stages": [s.to_dict() for s in progress.stages],
        "history": [h.to_dict() for h in history], "saturation": sat.to_dict(), "steps": progress.steps, "tokens": progress.tokens,
        "seconds": progress.seconds, "notes": notes, "data": {task.name: cache.data_record(ctx, task.name, data)}, **cache.hyper(ctx, style),
        "precision": precision.to_dict(), "versions": cache.versions(),
    }
    if zero_shot:
        # Honest: the baseline is the base checkpoint itself; no copy is written.
        checkpoint = CheckpointRef(read_manifest(base_dir).id, str(base_dir), zero_shot=True)
    else:
        checkpoint_id = f"st-{task.name}-{run.key[:12]}"
        path = ck.write_checkpoint(
            ctx.checkpoints_root, checkpoint_id, model, tokenizer, base_dir=base_dir, lora=ctx.spec.finetune == "lora",
            tasks=task_records([task]), metrics=metrics, training=training,
            description=f"single-task baseline for {task.name}: best dev step {best.step}",
        )
        checkpoint = CheckpointRef(checkpoint_id, str(path), zero_shot=False)
    test = None
    if ctx.spec.eval.test:
        if zero_shot:
            model, tokenizer = load_model(ctx, base_dir, lora=False)
        test = score_dev(ctx, model, tokenizer, [task], style, split="test", label=checkpoint.id)[task.name]
    result = SingleTaskRun(
        run_id=run.run_id, key=run.key, task=task.name, base=cache.base_ref(base_dir), checkpoint=checkpoint, selected=selected,
        dev=chosen, zero_shot=zero, test=test, history=history, saturation=sat, steps=progress.steps, tokens=progress.tokens,
        seconds=progress.seconds, trivial=trivial, degenerate=degenerate, dev_selection=ctx.dev_selection(task.name), precision=precision,
        stopped_early=progress.stages[-1].stopped_early if progress.stages else None,
    )
    cache.finish(ctx, run, result.to_dict())
    run.emit({"event": "run_finished", "checkpoint": checkpoint.path, "selected": selected.to_dict(),
              "dev": chosen.value.value, "zero_shot": zero.value.value})
    return result


def high_resource(ctx: Context, baselines: Mapping[str, SingleTaskRun]) -> list[str]:
    """The tasks stage 1 of two_stage trains on: as the job lists them, else
    those whose baseline saturated late (or had not saturated yet)."""
    spec = ctx.spec
    if spec.method != "two_stage":
        return []
    if spec.resources.high is not None:
        ctx.emit({"event": "resources", "high": list(spec.resources.high), "source": "job spec"})
        return list(spec.resources.high)
    high = []
    detail = {}
    for name, b in baselines.items():
        # From the curve, not the run's own record: saturation_epochs is not part of a baseline's key.
        sat = saturation(b.history, spec.resources.saturation_epochs)
        detail[name] = sat.to_dict()
        if sat.high:
            high.append(name)
    ctx.emit({"event": "resources", "high": high, "source": "baseline saturation", "detail": detail})
    return high
