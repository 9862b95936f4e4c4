"""Training curves from a run's progress events (`<run folder>/events.jsonl`).

Two kinds of output, both rebuilt from the events alone, so they can be produced for a
finished run, a running one, or one trained on another machine:

    write_tensorboard   TensorBoard event files: train/loss, train/lr and
                        train/tokens_per_s for every step event,
                        dev/<task>/<metric> for every evaluation
    plot_task_curve     a PNG of one task's dev metric over optimizer steps, one
                        line per run (single-task vs multi-task, say), with
                        dashed reference levels (baseline, trivial, zero-shot)
    plot_loss_curves    a PNG of training-loss curves side by side (fp32 vs bf16)

A run's stages each count steps from 1 again, so every point is placed at a
global step: the steps of the earlier stages plus the step within the stage.
A resumed run replays the steps after its last saved state and logs them a
second time; a step's last logged value wins, so every curve has one point
per step.

TensorBoard and matplotlib are optional (`pip install "mtserve[curves]"`):
they are imported inside the functions, which return None with a warning
when the package is missing, so a trainer without them still trains.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "mtserve[curves]"'
TRAIN_SCALARS = ("loss", "lr", "tokens_per_s")
EVENT_FILE_PREFIX = "events.out.tfevents."
FIGSIZE = (6.0, 4.0)
DPI = 100


def _int_step(value: Any) -> int | None:
    # bool is an int subclass; a step of True is a malformed event, not step 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _stage_offsets(events: Iterable[Mapping[str, Any]]) -> dict[Any, int]:
    """Global step of each stage's step 0: the steps run by the stages before it."""
    # A stage's length is the largest step seen in it, not its planned
    # "steps": an early-stopped stage ran fewer, and the next stage continues
    # from where it actually stopped. Eval events count too: an early stop
    # happens at an eval step that the step log (every log_every) may skip.
    last: dict[Any, int] = {}  # insertion order = order of first appearance
    for event in events:
        if event.get("event") not in ("step", "eval"):
            continue
        step = _int_step(event.get("step"))
        if step is None:
            continue
        stage = event.get("stage")
        last[stage] = max(last.get(stage, 0), step)
    offsets: dict[Any, int] = {}
    total = 0
    for stage, steps in last.items():
        offsets[stage] = total
        total += steps
    return offsets


def _with_global_steps(events: Sequence[Mapping[str, Any]], kind: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    offsets = _stage_offsets(events)
    for event in events:
        if event.get("event") != kind:
            continue
        step = _int_step(event.get("step"))
        if step is None:
            continue
        yield offsets[event.get("stage")] + step, event


def _last_per_step(points: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    # Later points overwrite earlier ones at the same step: a resumed run's
    # replayed steps, and a stage's eval-at-start, which sits at the same
    # global step as the previous stage's final eval.
    by_step: dict[int, float] = {}
    for step, value in points:
        by_step[step] = value
    return sorted(by_step.items())


def _dev_values(event: Mapping[str, Any]) -> Iterator[tuple[str, str | None, float]]:
    """(task, metric name, value) of an eval event; an eval without a summary
    (a non-main rank's, or a failed one) has none."""
    summary = event.get("summary")
    if not isinstance(summary, Mapping):
        return
    values = summary.get("values")
    metrics = summary.get("metrics")
    if not isinstance(values, Mapping):
        return
    if not isinstance(metrics, Mapping):
        metrics = {}
    for task, raw in values.items():
        value = _number(raw)
        if value is not None:
            metric = metrics.get(task)
            yield str(task), (str(metric) if metric is not None else None), value


def loss_curve(events: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(global step, training loss) of the run's step events, by step."""
    points = []
    for step, event in _with_global_steps(events, "step"):
        loss = _number(event.get("loss"))
        if loss is not None:
            points.append((step, loss))
    return _last_per_step(points)


def dev_curve(events: Sequence[Mapping[str, Any]], task: str) -> list[tuple[int, float]]:
    """(global step, dev metric value) of one task over the run's evaluations,
    by step; empty when the run never evaluated the task."""
    points = []
    for step, event in _with_global_steps(events, "eval"):
        for name, _metric, value in _dev_values(event):
            if name == task:
                points.append((step, value))
    return _last_per_step(points)


def _scalars(events: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, tuple[float, float | None]]]:
    """tag -> global step -> (value, wall time), last logged value per step."""
    out: dict[str, dict[int, tuple[float, float | None]]] = {}
    for kind in ("step", "eval"):
        for step, event in _with_global_steps(events, kind):
            walltime = _number(event.get("time"))
            if kind == "step":
                items = [(f"train/{key}", _number(event.get(key))) for key in TRAIN_SCALARS]
            else:
                items = [(f"dev/{task}/{metric or 'value'}", value) for task, metric, value in _dev_values(event)]
            for tag, value in items:
                if value is not None:
                    out.setdefault(tag, {})[step] = (value, walltime)
    return out


def write_tensorboard(events: Sequence[Mapping[str, Any]], log_dir: Path) -> Path | None:
    """Write the run's curves as TensorBoard event files into log_dir and
    return log_dir; None (and a warning) when TensorBoard is not installed.

    Any event files already in log_dir are removed first: the events list is
    the whole history, so writing it again (after a resume, say) replaces the
    curves instead of adding a second copy of every point."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("TensorBoard is not installed, no curves written to %s: %s", log_dir, INSTALL_HINT)
        return None
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    # Only the event files: log_dir may hold other things (a projector
    # config, a user's notes) that are not ours to delete.
    for old in log_dir.glob(EVENT_FILE_PREFIX + "*"):
        if old.is_file():
            old.unlink()
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        # In global-step order across all tags, as a live writer would have
        # written them: TensorBoard reads a step lower than the one before as
        # a restart and purges the points after it.
        points = [(step, tag, value, walltime)
                  for tag, by_step in _scalars(events).items()
                  for step, (value, walltime) in by_step.items()]
        for step, tag, value, walltime in sorted(points, key=lambda p: (p[0], p[1])):
            writer.add_scalar(tag, value, global_step=step, walltime=walltime)
    finally:
        writer.close()
    return log_dir


def _new_figure() -> Figure:
    # The object-oriented API with an explicit Agg canvas, not pyplot: no
    # global backend switch (a notebook's inline backend stays), and the
    # figure is never registered with pyplot's figure manager, so nothing is
    # left open once it goes out of scope.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _task_figure(
    task: str,
    metric: str,
    curves: Mapping[str, Sequence[tuple[int, float]]],
    lines: Mapping[str, float | None],
    title: str | None,
) -> Figure:
    fig = _new_figure()
    ax = fig.add_subplot()
    color = 0
    for name, points in curves.items():
        xs = [step for step, _ in points]
        ys = [value for _, value in points]
        # Markers: evaluations are sparse, and a curve of one point (a run
        # evaluated once) would be invisible as a line alone.
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=name, color=f"C{color}")
        color += 1
    for name, level in lines.items():
        if level is None or not math.isfinite(level):
            continue
        ax.axhline(level, linestyle="--", linewidth=1.0, label=f"{name} ({level:.3f})", color=f"C{color}")
        color += 1
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(title if title is not None else f"{task}: dev {metric}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _loss_figure(curves: Mapping[str, Sequence[tuple[int, float]]], title: str) -> Figure:
    fig = _new_figure()
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(curves.items()):
        ax.plot([s for s, _ in points], [v for _, v in points], linewidth=1.2, label=name, color=f"C{i}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        # Not registered with pyplot, so there is nothing to close; clearing
        # drops the artists now rather than whenever the figure is collected.
        fig.clear()
    return path


def _matplotlib_missing(path: Path) -> bool:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed, no plot written to %s: %s", path, INSTALL_HINT)
        return True
    return False


def plot_task_curve(
    path: Path,
    task: str,
    metric: str,
    curves: Mapping[str, Sequence[tuple[int, float]]],
    *,
    lines: Mapping[str, float | None] = {},  # read only, never mutated
    title: str | None = None,
) -> Path | None:
    """A PNG of one task's dev metric: one line per named curve of (global
    step, value) points, one dashed horizontal line per reference level in
    `lines` (a None level, e.g. no zero-shot evaluation, is left out).
    Returns path; None (and a warning) when matplotlib is not installed."""
    if _matplotlib_missing(path):
        return None
    return _save(_task_figure(task, metric, curves, lines, title), path)


def plot_loss_curves(path: Path, curves: Mapping[str, Sequence[tuple[int, float]]], title: str) -> Path | None:
    """A PNG of training-loss curves side by side, one line per named curve
    of (global step, loss) points (see loss_curve). Returns path; None (and a
    warning) when matplotlib is not installed."""
    if _matplotlib_missing(path):
        return None
    return _save(_loss_figure(curves, title), path)
