"""Benchmarks built from real labelled text shipped in PyPI packages.

`build_benchmark(out_dir, ...)` (in `trainer.benchmarks.build`) writes the
tasks' JSONL splits, a catalogue and a manifest; `python -m
trainer.benchmarks.build --out DIR` does the same from a shell.
"""
