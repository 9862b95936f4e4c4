"""Benchmarks built from real labelled text shipped in PyPI packages.

`build_benchmark(out_dir, ...)` (in `trainer.benchmarks.build`) writes the
tasks' JSONL splits, a catalogue and a manifest; `python -m
trainer.benchmarks.build --out DIR` does the same from a shell.
"""

from typing import Any

__all__ = ["build_benchmark"]


def __getattr__(name: str) -> Any:  # lazy: `python -m trainer.benchmarks.build` must not import it twice
    if name == "build_benchmark":
        from trainer.benchmarks.build import build_benchmark

        return build_benchmark
    raise AttributeError(name)
