"""Pure planning (no model, no files): the task filter, resource grouping by
saturation, and the step counts of every run's stages (see the package
docstring for the rules)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mtserve.errors import ValidationError
from mtserve.tasks import Task
from trainer.job import JobSpec
from trainer.results import Saturation, SingleTaskPoint
from trainer.sampling import rates_for
from trainer.train import StagePlan


def group_tasks(tasks: Sequence[Task], group_by: str) -> dict[str, list[Task]]:
    """The task filter (section 4.1): group name -> tasks, in the given order.

    kind      classification (binary, ordinal, multiclass, multilabel) | generation
    taxonomy  binary | ordinal | multiclass | multilabel | generation (the paper's
              finer grouping, Table 5)
    none      all (one model for everything, e.g. Table 2's mixed run)
    """
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        if group_by == "kind":
            name = "generation" if task.is_generation else "classification"
        elif group_by == "taxonomy":
            name = task.taxonomy.value
        elif group_by == "none":
            name = "all"
        else:
            raise ValidationError("task_filter.group_by", "must be kind, taxonomy or none", group_by)
        groups.setdefault(name, []).append(task)
    return groups


def saturation(history: Sequence[SingleTaskPoint], threshold: float) -> Saturation:
    """From a single-task run's evaluations in training order: the epoch of
    the first evaluation that reaches the best value. High-resource when that
    epoch is > threshold (the paper's "overfits after more than 5 epochs");
    when the best is the last evaluation the run stopped before saturating
    (censored), and the task counts as high-resource: it was still learning,
    which is what stage 1 is for. At CPU scale nearly every run is censored
    before 5 epochs; name the tasks in resources.high."""
    if not history:
        raise ValidationError("baseline history", "needs at least one evaluation to find a saturation epoch", 0)
    best = max(h.value for h in history)
    first = next(h for h in history if h.value >= best)
    last = history[-1]
    censored = first is last and len(history) > 1
    epoch = float(first.epochs)
    return Saturation(epoch=epoch, censored=censored, last_epoch=float(last.epochs), high=epoch > threshold or censored)


def steps_for(epochs: float, pool: int, per_step: int) -> int:
    return max(1, math.ceil(epochs * pool / per_step))


def plan_stages(
    spec: JobSpec, method: str, sizes: Mapping[str, int], high: Sequence[str], per_step: int, *, lr: float
) -> tuple[list[StagePlan], dict[str, Any]]:
    """The stages of one multi-task run over `sizes` (task -> training examples),
    and notes on how their lengths were set. `lr`: the resolved rate (Context.lr)."""
    mx = spec.mixture
    every = spec.eval.multitask_every_steps
    pool_all = sum(sizes.values())
    pool_capped = sum(min(n, mx.cap_k) for n in sizes.values())
    notes: dict[str, Any] = {"examples_per_step": per_step, "max_steps": spec.max_steps}
    if method == "two_stage":
        high_sizes = {t: n for t, n in sizes.items() if t in set(high)}
        s1 = 0
        if high_sizes:
            s1 = mx.stage1_steps or steps_for(mx.stage1_epochs, sum(high_sizes.values()), per_step)
        s2 = mx.stage2_steps or steps_for(mx.stage2_epochs, pool_capped, per_step)
        if s1 + s2 > spec.max_steps:
            notes["uncapped_steps"] = {"stage1": s1, "stage2": s2}
            new_s1 = max(1, round(spec.max_steps * s1 / (s1 + s2))) if s1 else 0
            new_s1 = min(new_s1, spec.max_steps - 1)
            s1, s2 = new_s1, spec.max_steps - new_s1
        stages = []
        if s1:
            stages.append(StagePlan("stage1", rates_for("instance_balanced", high_sizes), s1, lr, strategy="instance_balanced"))
        else:
            notes["stage1"] = "skipped: no high-resource task in this group"
        stages.append(
            StagePlan(
                "stage2", rates_for("temperature_capped", sizes, tau=mx.tau, cap_k=mx.cap_k), s2, lr,
                strategy="temperature_capped", eval_every=every, eval_at_end=True, select_best=every > 0,
            )
        )
        return stages, notes
    pool = pool_capped if method == "temperature_capped" else pool_all
    steps = mx.stage2_steps or steps_for(mx.stage2_epochs, pool, per_step)
    if steps > spec.max_steps:
        notes["uncapped_steps"] = {"mixture": steps}
        steps = spec.max_steps
    if method == "unimax":
        rates = rates_for("unimax", sizes, budget=steps * per_step, max_epochs=mx.unimax_max_epochs)
    elif method == "temperature":
        rates = rates_for("temperature", sizes, tau=mx.tau)
    elif method == "temperature_capped":
        rates = rates_for("temperature_capped", sizes, tau=mx.tau, cap_k=mx.cap_k)
    else:
        rates = rates_for(method, dict(sizes))
    return [StagePlan("mixture", rates, steps, lr, strategy=method, eval_every=every, eval_at_end=True, select_best=every > 0)], notes


def baseline_steps(spec: JobSpec, n: int, per_step: int) -> tuple[int, dict[str, Any]]:
    b = spec.baselines
    cap = b.max_steps or spec.max_steps
    steps = b.steps or steps_for(b.epochs, n, per_step)
    notes: dict[str, Any] = {"examples_per_step": per_step, "max_steps": cap}
    if steps > cap:
        notes["uncapped_steps"] = steps
        steps = cap
    return steps, notes
