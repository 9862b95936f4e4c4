"""A learning-rate sweep over single-task baselines, chosen on dev.

Table 6's lr 3e-5 is the paper's for Qwen2-7B over 15,000 steps; a 135M model
trained for a hundred steps on a CPU barely moves at that rate. The sweep runs
the job's single-task baselines (the same code path, run cache and dev sets as
every job) at each learning rate of a grid, for full fine-tuning and LoRA,
and picks, per fine-tuning mode, the rate with the highest mean dev metric
over the tasks (ties: the smaller rate). Selection is on dev only; each
point's zero-shot and trivial baseline stand beside it, so a rate that merely
reaches the majority class is visible as such.

Every point is an ordinary cached run: a sweep that stops resumes where it
stopped, a point that equals a job's baseline reuses it, and changing the
grid only trains the new points.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtserve.config import Settings
from trainer.job import JobSpec, parse_job
from trainer.pipeline import run_job
from trainer.results import JobResult, SingleTaskRun
from trainer.runs import EVENTS, RunStore, read_events

DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "full": (3e-5, 1e-4, 3e-4),
    "lora": (3e-4, 1e-3, 3e-3),
}


@dataclass(frozen=True)
class PointTask:
    """One task's baseline at one point of the grid."""

    task: str
    metric: str
    dev: float
    dev_low: float
    dev_high: float
    zero_shot: float
    trivial: float | None
    degenerate: bool
    selected: str  # which evaluation won (zero-shot or a step)
    run_id: str
    curve: list[tuple[int, float]]  # (step, dev metric) at every evaluation
    stopped_early: int | None  # the step the baseline stopped at, if patience ended it


@dataclass(frozen=True)
class SweepPoint:
    finetune: str
    precision: str
    lr: float
    tasks: dict[str, PointTask]
    seconds_per_step: float | None  # median over the points' step events (training only)
    seconds: float  # wall time of the point's job (short when its runs were cached)

    @property
    def mean(self) -> float:
        return statistics.fmean(t.dev for t in self.tasks.values())


@dataclass
class SweepResult:
    job: str
    points: list[SweepPoint]
    chosen: dict[str, float]  # "<finetune>/<precision>" -> the chosen lr
    files: dict[str, str] = field(default_factory=dict)  # plots written beside the result

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "chosen": dict(self.chosen),
            "points": [{**asdict(p), "mean": p.mean} for p in self.points],
            "files": dict(self.files),
        }

    def to_markdown(self) -> str:
        tasks = sorted({t for p in self.points for t in p.tasks})
        head = "| fine-tuning | precision | lr | " + " | ".join(tasks) + " | mean | s/step | chosen |"
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for p in self.points:
            cells = []
            for t in tasks:
                pt = p.tasks.get(t)
                if pt is None:
                    cells.append("-")
                    continue
                mark = " (degenerate)" if pt.degenerate else ""
                cells.append(f"{pt.dev * 100:.1f} ({pt.dev_low * 100:.1f}-{pt.dev_high * 100:.1f}){mark}")
            chosen = "yes" if self.chosen.get(_group(p)) == p.lr else ""
            sps = "-" if p.seconds_per_step is None else f"{p.seconds_per_step:.2f}"
            lines.append(f"| {p.finetune} | {p.precision} | {p.lr:g} | " + " | ".join(cells) + f" | {p.mean * 100:.1f} | {sps} | {chosen} |")
        ref = self.points[0] if self.points else None
        if ref is not None:
            lines.append("")
            beside = []
            for t in tasks:
                if t not in ref.tasks:
                    continue
                rt = ref.tasks[t]
                trivial = "-" if rt.trivial is None else f"{rt.trivial * 100:.1f}"
                beside.append(f"{t}: zero-shot {rt.zero_shot * 100:.1f}, trivial {trivial} ({rt.metric})")
            lines.append("Beside them (the same dev sets): " + "; ".join(beside) + ".")
        return "\n".join(lines)


def _group(p: SweepPoint) -> str:
    return f"{p.finetune}/{p.precision}"


def _lr_name(lr: float) -> str:
    return f"{lr:.0e}".replace("+", "")


def point_spec(spec: JobSpec, finetune: str, lr: float, precision: str | None = None) -> JobSpec:
    """The job's tasks as single-task baselines at one grid point. Mixture and
    resource settings do not apply to baselines and are dropped; LoRA adapters
    are written beside their base (where loading finds them)."""
    data = spec.to_dict()
    for key in ("mixture", "resources", "promote"):
        data.pop(key, None)
    suffix = f"-{finetune}-lr{_lr_name(lr)}"
    data["name"] = spec.name[: 64 - len(suffix)] + suffix  # the point stays distinct however long the job's name
    data["method"] = "single_task"
    data["finetune"] = finetune
    data["training"]["lr"] = lr
    if precision is not None:
        data["training"]["precision"] = precision
    if finetune == "lora":
        data["output"]["checkpoints_dir"] = None  # the job's LoRA settings (or the defaults) stay
    else:
        data["lora"] = None
    data["baselines"]["train"] = True
    return parse_job(data, base_dir=spec.base_dir)


def choose(points: Sequence[SweepPoint]) -> dict[str, float]:
    """Per fine-tuning mode and precision: the lr with the highest mean dev metric (ties: the smaller lr)."""
    best: dict[str, SweepPoint] = {}
    for p in points:
        g = _group(p)
        if g not in best or (p.mean, -p.lr) > (best[g].mean, -best[g].lr):
            best[g] = p
    return {g: p.lr for g, p in best.items()}


def _point(store: RunStore, result: JobResult, finetune: str, precision: str, lr: float, seconds: float) -> SweepPoint:
    tasks: dict[str, PointTask] = {}
    step_times: list[float] = []
    baselines: dict[str, SingleTaskRun] = {}
    for run_id in result.runs:
        stored = store.result(run_id)
        if stored is not None and stored.get("kind") == SingleTaskRun.kind:
            run = SingleTaskRun.from_dict(stored)
            baselines[run.task] = run
    for row in result.rows:
        b = baselines[row.task]
        # every task of a point has its baseline
        assert row.baseline is not None and row.zero_shot is not None and row.metric is not None and row.baseline_selected is not None
        tasks[row.task] = PointTask(
            task=row.task, metric=row.metric, dev=row.baseline.estimate.value, dev_low=row.baseline.estimate.low,
            dev_high=row.baseline.estimate.high, zero_shot=row.zero_shot.estimate.value, trivial=row.trivial.value,
            degenerate=bool(row.degenerate_baseline), selected=row.baseline_selected, run_id=b.run_id,
            curve=[(h.step, h.value) for h in b.history], stopped_early=None if b.stopped_early is None else b.stopped_early.step,
        )
        step_times += [e["seconds_per_step"] for e in read_events(store.dir(b.run_id) / EVENTS) if e.get("event") == "step"]
    sps = statistics.median(step_times) if step_times else None
    resolved = {b.precision.resolved for b in baselines.values() if b.precision is not None}
    if len(resolved) == 1:  # show what `auto` chose, not the word auto
        precision = resolved.pop()
    return SweepPoint(finetune, precision, lr, tasks, sps, seconds)

def run_sweep(
    spec: JobSpec,
    grid: Mapping[str, Sequence[float]] | None = None,
    *,
    precisions: Sequence[str] | None = None,
    settings: Settings | None = None,
    emit: Callable[[Mapping[str, Any]], None] | None = None,
    resume: bool = True,
    out_dir: Path | None = None,
) -> SweepResult:
    """Run every grid point (fine-tuning mode -> learning rates) at each
    precision (default: the job's), then choose per mode on dev."""
    grid = dict(grid or DEFAULT_GRID)
    points: list[SweepPoint] = []
    store = RunStore(spec.runs_path)
    for precision in precisions or [spec.training.precision]:
        for finetune, lrs in grid.items():
            for lr in lrs:
                ps = point_spec(spec, finetune, lr, precision)
                if emit is not None:
                    emit({"event": "sweep_point", "finetune": finetune, "lr": lr, "precision": precision})
                result = run_job(ps, settings=settings, emit=emit, resume=resume)
                points.append(_point(store, result, finetune, precision, lr, result.seconds))
    sweep = SweepResult(spec.name, points, choose(points))
    if out_dir is not None:
        sweep.files = plot_sweep(sweep, out_dir)
    return sweep


def plot_sweep(sweep: SweepResult, out_dir: Path) -> dict[str, str]:
    """One PNG per task and fine-tuning mode: the dev curve at every lr, with the
    zero-shot and trivial lines (matplotlib, an optional extra)."""
    from trainer.curves import plot_task_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    tasks = sorted({t for p in sweep.points for t in p.tasks})
    for t in tasks:
        for group in sorted({_group(p) for p in sweep.points}):
            mine = [p for p in sweep.points if _group(p) == group and t in p.tasks]
            if not mine:
                continue
            ref = mine[0].tasks[t]
            curves = {f"lr {p.lr:g}": p.tasks[t].curve for p in mine}
            path = plot_task_curve(
                out_dir / f"sweep-{t}-{group.replace('/', '-')}.png", t, ref.metric, curves,
                lines={"zero-shot": ref.zero_shot, "trivial": ref.trivial}, title=f"{t}: {group} learning-rate sweep (dev)",
            )
            if path is not None:
                files[f"{t}/{group}"] = str(path)
    return files


__all__ = ["DEFAULT_GRID", "PointTask", "SweepPoint", "SweepResult", "choose", "plot_sweep", "point_spec", "run_sweep"]
