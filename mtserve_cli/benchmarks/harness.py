"""What every measure shares: alternating arms, medians and spread, the
ratio and its direction, and the JSON record of a run (date, machine,
command, library versions, threads, load)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Direction = Literal["lower is better", "higher is better"]

# A machine whose 1-minute load average is above this share of its cores was
# busy with something else: its figures are provisional, and the record says so.
LOADED_SHARE = 0.5


@dataclass(frozen=True)
class Summary:
    """One arm's repeats: what was measured, in which unit, and its spread."""

    unit: str
    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "median": self.median, "min": min(self.values), "max": max(self.values), "values": list(self.values)}


@dataclass(frozen=True)
class Ratio:
    """numerator / denominator of the arms' medians; `paired` are the ratios
    of each repeat's two measurements (taken moments apart), whose range is
    the spread a reader should trust the ratio to."""

    numerator: str
    denominator: str
    value: float
    paired: tuple[float, ...]
    direction: Direction
    goal: float | None = None  # the target, in the same direction

    @property
    def meets_goal(self) -> bool | None:
        if self.goal is None:
            return None
        return self.value <= self.goal if self.direction == "lower is better" else self.value >= self.goal

    def to_dict(self) -> dict[str, Any]:
        return {
            "of": f"{self.numerator} / {self.denominator}", "value": self.value,
            "paired_min": min(self.paired), "paired_max": max(self.paired), "paired": list(self.paired),
            "direction": self.direction, "goal": self.goal, "meets_goal": self.meets_goal,
        }

    def describe(self) -> str:
        goal = "" if self.goal is None else f"; goal {'<=' if self.direction == 'lower is better' else '>='} {self.goal:g}x" + (
            " (met)" if self.meets_goal else f" (missed by {abs(self.value - self.goal):.2f}x)")
        return (f"{self.numerator} / {self.denominator} = {self.value:.2f}x "
                f"(repeats {min(self.paired):.2f}-{max(self.paired):.2f}; {self.direction}{goal})")


def alternate(arms: Sequence[tuple[str, Callable[[], float]]], repeats: int) -> dict[str, list[float]]:
    """Run each arm `repeats` times, interleaved: A B, then B A, then A B...
    Each call returns the arm's figure for one repeat (seconds, a rate, a
    percentile). Returns the figures per arm, in repeat order."""
    out: dict[str, list[float]] = {name: [] for name, _ in arms}
    for r in range(repeats):
        for name, arm in (arms if r % 2 == 0 else list(reversed(arms))):
            out[name].append(arm())
    return out


def ratio(figures: dict[str, list[float]], numerator: str, denominator: str, direction: Direction, goal: float | None = None) -> Ratio:
    num, den = figures[numerator], figures[denominator]
    paired = tuple(a / b for a, b in zip(num, den, strict=True))
    return Ratio(numerator, denominator, statistics.median(num) / statistics.median(den), paired, direction, goal)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` took."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# -- the record ---------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def machine() -> dict[str, Any]:
    """What ran the measure: CPU, cores, memory, bf16 units, the load now."""
    from mtserve.precision import cpu_bf16_flags

    load = list(os.getloadavg())
    cores = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(), "cores": cores, "memory_gib": _memory_gib(), "bf16_flags": cpu_bf16_flags(),
        "platform": platform.platform(), "load_average": [round(v, 2) for v in load],
        "loaded": load[0] > LOADED_SHARE * cores,
    }


def software() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
    }


@dataclass
class Result:
    """One measure's run, as written to its JSON file."""

    measure: str
    question: str  # what the ratio answers, in the words
    arms: dict[str, Summary]
    ratios: list[Ratio]
    config: dict[str, Any]  # model, dtype, security, repeats, sizes
    details: dict[str, Any] = field(default_factory=dict)  # answers' agreement, invalid outputs, token counts
    notes: list[str] = field(default_factory=list)
    command: str = field(default_factory=lambda: " ".join(["mtserve", *sys.argv[1:]]) if sys.argv else "")
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    machine_before: dict[str, Any] = field(default_factory=machine)

    def to_dict(self) -> dict[str, Any]:
        after = machine()
        notes = list(self.notes)
        if self.config.get("smoke"):
            notes.append("smoke mode: a tiny random model, to prove the measure runs; its figures measure nothing")
        if self.machine_before["loaded"] or after["loaded"]:
            notes.append(
                f"the machine was loaded (1-minute load average {self.machine_before['load_average'][0]} before, "
                f"{after['load_average'][0]} after, on {after['cores']} cores): the figures are provisional")
        return {
            "measure": self.measure, "question": self.question, "date": self.date, "command": self.command,
            "machine": {**self.machine_before, "load_average_after": after["load_average"], "loaded_after": after["loaded"]},
            "software": software(), "config": self.config,
            "arms": {name: s.to_dict() for name, s in self.arms.items()},
            "ratios": [r.to_dict() for r in self.ratios], "details": self.details, "notes": notes,
        }

    def lines(self) -> list[str]:
        """The human summary: both arms, then each ratio."""
        out = [f"{self.measure}: {self.question}"]
        for name, s in self.arms.items():
            out.append(f"  {name:48s} median {s.median:10.4g} {s.unit:10s} (min {min(s.values):.4g}, max {max(s.values):.4g}, n={len(s.values)})")
        out += [f"  {r.describe()}" for r in self.ratios]
        for k, v in self.details.items():
            if isinstance(v, dict):
                v = ", ".join(f"{kk}={_short(vv)}" for kk, vv in v.items() if not isinstance(vv, (dict, list)))
            out.append(f"  {k}: {_short(v)}")
        return out


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summaries(figures: dict[str, list[float]], unit: str) -> dict[str, Summary]:
    return {name: Summary(unit, tuple(values)) for name, values in figures.items()}


def write_result(result: Result, out: Path) -> Path:
    """Write the record to `out` (a .json file, or a folder: <measure>.json in it)."""
    path = out / f"{result.measure}.json" if out.suffix != ".json" else out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
