"""Training curves from a run's events: global steps across stages, TensorBoard
event files, PNG plots, and the optional extras being absent."""

from __future__ import annotations

import json
import logging
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from trainer.curves import dev_curve, loss_curve, plot_loss_curves, plot_task_curve, write_tensorboard
from trainer.runs import read_events

T0 = 1_796_160_000.0


def step(stage: str, n: int, loss: float, *, t: float) -> dict[str, Any]:
    return {"event": "step", "stage": stage, "step": n, "steps": 40, "loss": loss, "lr": 1e-4 * n,
            "tokens_per_s": 900.0 + n, "seconds_per_step": 2.1, "epochs": {"task-a": 0.01 * n}, "time": T0 + t}


def evaluation(stage: str, n: int, a: float | None, b: float | None = None, *, t: float) -> dict[str, Any]:
    if a is None:
        summary = None
    else:
        values = {"task-a": a, "task-b": b}
        summary = {"values": values, "metrics": {"task-a": "accuracy", "task-b": "macro_f1"}, "mean": (a + b) / 2}  # type: ignore[operator]
    return {"event": "eval", "stage": stage, "step": n, "epochs": {"task-a": 0.01 * n, "task-b": 0.02 * n},
            "summary": summary, "best": False, "time": T0 + t}


def two_stage_run() -> list[dict[str, Any]]:
    """A multi-task (two tasks) run of two stages. Stage 1 is planned for 40
    steps but stops early at an eval at step 25, which the step log (every 10)
    never shows; stage 2 runs 20 steps and is killed and resumed once."""
    return [
        {"event": "run_started", "action": "train", "stages": [], "time": T0},
        {"event": "stage_started", "stage": "stage1", "steps": 40, "time": T0},
        evaluation("stage1", 0, 0.50, 0.30, t=1),
        step("stage1", 10, 2.0, t=10),
        step("stage1", 20, 1.5, t=20),
        evaluation("stage1", 20, 0.60, 0.40, t=21),
        evaluation("stage1", 25, 0.65, 0.45, t=26),
        {"event": "early_stop", "stage": "stage1", "step": 25, "steps": 40, "best_step": 25, "patience": 1},
        # Not a step or eval event: must not lengthen stage 1, whatever it carries.
        {"event": "state_saved", "stage": "stage1", "step": 1000},
        {"event": "eval_progress", "split": "dev", "done": 3, "total": 9},
        {"event": "stage_started", "stage": "stage2", "steps": 20},
        # Eval at the start of stage 2: global step 25, where stage 1's last
        # eval also sits; the later one wins.
        evaluation("stage2", 0, 0.66, 0.46, t=30),
        step("stage2", 10, 1.2, t=40),  # killed after this, before a state save
        {"event": "resumed", "stage": "stage2", "step": 5, "stage_done": False},
        step("stage2", 10, 1.1, t=50),  # replayed: replaces the point above
        evaluation("stage2", 10, None, t=51),  # no summary: no dev point, but the step counts
        step("stage2", 20, 0.9, t=60),
        evaluation("stage2", 20, 0.70, 0.50, t=61),
        {"event": "run_finished", "checkpoint": "x"},
    ]


LOSS = [(10, 2.0), (20, 1.5), (35, 1.1), (45, 0.9)]
DEV_A = [(0, 0.50), (20, 0.60), (25, 0.66), (45, 0.70)]
DEV_B = [(0, 0.30), (20, 0.40), (25, 0.46), (45, 0.50)]


# --- global steps -------------------------------------------------------------


def test_loss_curve_global_steps() -> None:
    assert loss_curve(two_stage_run()) == LOSS


def test_dev_curve_global_steps_per_task() -> None:
    events = two_stage_run()
    assert dev_curve(events, "task-a") == DEV_A
    assert dev_curve(events, "task-b") == DEV_B
    assert dev_curve(events, "task-c") == []


def test_single_stage_steps_are_global_steps() -> None:
    events = [step("single", 12, 0.71, t=1), evaluation("single", 20, 0.81, 0.5, t=2), step("single", 20, 0.6, t=3)]
    assert loss_curve(events) == [(12, 0.71), (20, 0.6)]
    assert dev_curve(events, "task-a") == [(20, 0.81)]


def test_stage_length_is_the_largest_step_seen_in_either_kind() -> None:
    # Stage "a" ends on an eval (step 7) past its last logged step (5).
    events = [step("a", 5, 1.0, t=0), evaluation("a", 7, 0.5, 0.5, t=1), step("b", 3, 0.5, t=2), step("c", 1, 0.2, t=3)]
    assert loss_curve(events) == [(5, 1.0), (10, 0.5), (11, 0.2)]


def test_curves_from_an_events_file_with_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    text = "".join(json.dumps(e) + "\n" for e in two_stage_run())
    path.write_text(text + '{"event": "step", "stage": "stage2", "st', encoding="utf-8")
    events = read_events(path)
    assert loss_curve(events) == LOSS
    assert dev_curve(events, "task-a") == DEV_A


# --- TensorBoard --------------------------------------------------------------


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def event_files(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("events.out.tfevents.*"))


def assert_points(points: list[tuple[int, float, float]], expected: list[tuple[int, float]]) -> None:
    """Steps exactly; values approximately, as TensorBoard stores float32."""
    assert [s for s, _, _ in points] == [s for s, _ in expected]
    assert [v for _, v, _ in points] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_write_tensorboard_scalars(tmp_path: Path) -> None:
    log_dir = tmp_path / "tb"
    assert write_tensorboard(two_stage_run(), log_dir) == log_dir
    assert len(event_files(log_dir)) == 1
    scalars = read_scalars(log_dir)
    assert set(scalars) == {"train/loss", "train/lr", "train/tokens_per_s", "dev/task-a/accuracy", "dev/task-b/macro_f1"}
    assert_points(scalars["train/loss"], LOSS)
    assert_points(scalars["train/lr"], [(10, 1e-3), (20, 2e-3), (35, 1e-3), (45, 2e-3)])
    assert_points(scalars["train/tokens_per_s"], [(10, 910.0), (20, 920.0), (35, 910.0), (45, 920.0)])
    assert_points(scalars["dev/task-a/accuracy"], DEV_A)
    assert_points(scalars["dev/task-b/macro_f1"], DEV_B)
    # The events' own times, not the time of writing: the replayed step 35 at t=50.
    assert [w for _, _, w in scalars["train/loss"]] == pytest.approx([T0 + 10, T0 + 20, T0 + 50, T0 + 60])


def test_write_tensorboard_twice_replaces(tmp_path: Path) -> None:
    log_dir = tmp_path / "tb"
    log_dir.mkdir()
    (log_dir / "notes.txt").write_text("not ours", encoding="utf-8")
    events = two_stage_run()
    write_tensorboard(events, log_dir)
    write_tensorboard(events, log_dir)
    assert len(event_files(log_dir)) == 1
    scalars = read_scalars(log_dir)
    assert [s for s, _, _ in scalars["train/loss"]] == [10, 20, 35, 45]
    assert [s for s, _, _ in scalars["dev/task-a/accuracy"]] == [0, 20, 25, 45]
    # A shorter history written last is all that remains.
    write_tensorboard(events[:5], log_dir)
    assert len(event_files(log_dir)) == 1
    scalars = read_scalars(log_dir)
    assert_points(scalars["train/loss"], [(10, 2.0), (20, 1.5)])
    assert_points(scalars["dev/task-a/accuracy"], [(0, 0.5)])
    assert (log_dir / "notes.txt").read_text(encoding="utf-8") == "not ours"


def test_write_tensorboard_without_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # A None entry makes the import raise ImportError, imported before or not.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    log_dir = tmp_path / "tb"
    with caplog.at_level(logging.WARNING, logger="trainer.curves"):
        assert write_tensorboard(two_stage_run(), log_dir) is None
    warnings = [r for r in caplog.records if r.name == "trainer.curves" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert 'pip install "mtserve[curves]"' in warnings[0].getMessage()
    assert not log_dir.exists()


# --- plots ----------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_task_curve_writes_png(tmp_path: Path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    events = two_stage_run()
    path = tmp_path / "plots" / "task-a.png"
    out = plot_task_curve(
        path, "task-a", "accuracy",
        {"single-task lr 1e-4": [(0, 0.5), (10, 0.7), (20, 0.8)], "multi-task": dev_curve(events, "task-a")},
        lines={"baseline": 0.80, "trivial (majority)": 0.50, "zero-shot": None},
    )
    assert out == path
    assert png_size(path) == (600, 400)  # 6 x 4 in at 100 dpi
    assert path.stat().st_size > 5_000
    assert matplotlib.get_backend() == backend


def test_plot_task_curve_legend_skips_missing_levels() -> None:
    from trainer.curves import _task_figure

    fig = _task_figure("task-a", "accuracy", {"single": [(0, 0.5), (10, 0.7)], "multi": [(5, 0.6)]},
                       {"baseline": 0.8, "zero-shot": None}, None)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["single", "multi", "baseline (0.800)"]
    assert ax.get_xlabel() == "optimizer step"
    assert ax.get_ylabel() == "accuracy"
    assert ax.get_title() == "task-a: dev accuracy"
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert [tuple(ln.get_ydata()) for ln in dashed] == [(0.8, 0.8)]


def test_plot_loss_curves_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    bf16 = [(s, v + 0.01) for s, v in LOSS]
    assert plot_loss_curves(path, {"fp32": loss_curve(two_stage_run()), "bf16": bf16}, "fp32 vs bf16") == path
    assert png_size(path) == (600, 400)
    assert path.stat().st_size > 5_000


def test_plots_leave_no_pyplot_figures(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_task_curve(tmp_path / "a.png", "task-a", "accuracy", {"x": DEV_A})
    plot_loss_curves(tmp_path / "b.png", {"x": LOSS}, "loss")
    assert plt.get_fignums() == before


MATPLOTLIB_MODULES = ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg",
                      "matplotlib.pyplot")


def test_plots_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    for name in MATPLOTLIB_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    with caplog.at_level(logging.WARNING, logger="trainer.curves"):
        assert plot_task_curve(tmp_path / "a.png", "task-a", "accuracy", {"x": DEV_A}, lines={"baseline": 0.8}) is None
        assert plot_loss_curves(tmp_path / "b.png", {"x": LOSS}, "loss") is None
    warnings = [r for r in caplog.records if r.name == "trainer.curves" and r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all('pip install "mtserve[curves]"' in r.getMessage() for r in warnings)
    assert list(tmp_path.iterdir()) == []


def test_plots_without_matplotlib_via_import_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def blocked(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    assert plot_task_curve(tmp_path / "a.png", "task-a", "accuracy", {"x": DEV_A}) is None
    assert not (tmp_path / "a.png").exists()
