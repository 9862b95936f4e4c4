"""The measures by name, and running a selection of them into result files."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from mtserve_cli.benchmarks.harness import Result, machine, write_result
from mtserve_cli.benchmarks.workload import BenchConfig

# measure -> (module, function). Imported when run: each measure pulls in
# what it drives (grpc, batch), and `mtserve bench --help` needs none of it.
_WHERE = {
    "cost": ("cost", "cost"), "sharing": ("cost", "sharing"), "latency": ("latency", "latency"),
    "throughput": ("throughput", "throughput"), "memory": ("memory", "memory"), "generate": ("generate", "generate"),
    "precision": ("precision", "precision"), "worker": ("worker", "worker"), "trainer": ("trainer_step", "trainer_step"),
}
MEASURES = tuple(_WHERE)


def measure(name: str) -> Callable[[BenchConfig], Result]:
    module, function = _WHERE[name]
    fn: Callable[[BenchConfig], Result] = getattr(importlib.import_module(f"mtserve_cli.benchmarks.{module}"), function)
    return fn


def run(names: Sequence[str], cfg: BenchConfig, out: Path) -> Iterator[tuple[Result, Path]]:
    """Run each named measure in turn, writing its record as soon as it ends
    (a later measure's failure keeps the earlier ones' files)."""
    for name in names:
        before, started = machine(), datetime.now(UTC).isoformat(timespec="seconds")
        result = measure(name)(cfg)
        # The record's date and "before" load are the run's start (a Result is made at its end).
        result.machine_before, result.date = before, started
        yield result, write_result(result, out)
