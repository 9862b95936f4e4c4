"""`mtserve bench <measure>` and `mtserve bench all`: the benchmark suite
(mtserve_cli/benchmarks/). Each measure prints both arms and the ratio, and
writes a JSON record; `--smoke` runs it on a tiny random model in seconds."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import typer

from mtserve_cli.root import app, settings

bench_app = typer.Typer(help="Benchmarks: ratios of two arms measured alternately in one run (long; never timed in tests).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

HELP = {
    "cost": "Every applicable task of a conversation in one call / one task (lower is better).",
    "sharing": "The tasks of a conversation one call each / all in one call: the shared prefix's gain (higher is better).",
    "latency": "One Classify over gRPC, secured and plaintext, p50 / one bare forward pass of the same prompt (lower is better).",
    "throughput": "The service at 8 concurrent clients / at 1 client, calls/s (higher is better).",
    "memory": "Peak RSS scoring every task on a batch of inputs / one task per input, a subprocess per arm (lower is better).",
    "generate": "A batched generate() loop parsed to labels / mtserve, with invalid outputs counted (higher is better).",
    "precision": "bf16 / float32 scoring time, with the answers' agreement (lower is better).",
    "worker": "The batch worker's rate / the bare engine's (higher is better).",
    "trainer": "The trainer's tokens/s / a bare forward-backward loop's on the same examples (higher is better).",
}


def _run(names: list[str], smoke: bool, model: str | None, repeats: int | None, n: int | None, out: Path | None, as_json: bool,
         threads: int | None = None) -> None:
    from mtserve_cli.benchmarks import suite
    from mtserve_cli.benchmarks.workload import BenchConfig

    if threads is not None:
        import torch

        # Process-wide: the in-process services and the engines all run on it (the record says which).
        torch.set_num_threads(threads)
    s = settings()
    if out is None:
        out = s.home / "bench" / datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    with tempfile.TemporaryDirectory(prefix="mtserve-bench-") as work:
        cfg = BenchConfig(settings=s, work_dir=Path(work), smoke=smoke, model=model,
                          repeats=repeats or (1 if smoke else 5), n=n or (2 if smoke else 8), threads=threads)
        records = []
        for result, path in suite.run(names, cfg, out):
            if as_json:
                records.append(result.to_dict())
            else:
                typer.echo("\n".join(result.lines()))
                typer.echo(f"  written to {path}")
    if as_json:
        typer.echo(json.dumps(records[0] if len(records) == 1 else records, indent=2, ensure_ascii=False))


# On a machine another job keeps busy, torch's default (one thread per core)
# spins against it and every figure is several times slower and noisier.
THREADS = typer.Option(None, "--threads", min=1, help="torch intra-op threads (default: torch's, one per core).")


def _command(name: str) -> None:
    def command(
        smoke: bool = typer.Option(False, "--smoke", help="A tiny random model, 1 repeat: proves the measure runs, measures nothing."),
        model: str | None = typer.Option(None, "--model", help="Checkpoint folder or id (default: the prepared default model)."),
        repeats: int | None = typer.Option(None, "--repeats", min=1, help="Repeats of each arm (default 5; smoke 1)."),
        n: int | None = typer.Option(None, "--n", min=1, help="Inputs per repeat (default 8; smoke 2)."),
        out: Path | None = typer.Option(None, "--out", help="A .json file, or a folder for <measure>.json (default <home>/bench/<time>/)."),
        as_json: bool = typer.Option(False, "--json", help="Print the record instead of the summary."),
        threads: int | None = THREADS,
    ) -> None:
        _run([name], smoke, model, repeats, n, out, as_json, threads)

    command.__doc__ = HELP[name]
    bench_app.command(name)(command)


for _name in HELP:
    _command(_name)


@bench_app.command("engine", hidden=True)
def engine_alias(
    model: str | None = typer.Option(None, "--model"),
    repeats: int | None = typer.Option(None, "--repeats", min=1),
    n: int | None = typer.Option(None, "--n", min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The former name of `mtserve bench sharing`."""
    _run(["sharing"], False, model, repeats, n, None, as_json)


@bench_app.command("all")
def bench_all(
    smoke: bool = typer.Option(False, "--smoke", help="A tiny random model, 1 repeat: proves every measure runs."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint folder or id (default: the prepared default model)."),
    repeats: int | None = typer.Option(None, "--repeats", min=1, help="Repeats of each arm (default 5; smoke 1)."),
    n: int | None = typer.Option(None, "--n", min=1, help="Inputs per repeat (default 8; smoke 2)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the <measure>.json records (default <home>/bench/<time>/)."),
    only: list[str] = typer.Option([], "--only", help="Run these measures only (repeatable)."),
    as_json: bool = typer.Option(False, "--json"),
    threads: int | None = THREADS,
) -> None:
    """Every measure in turn, one record each."""
    from mtserve_cli.benchmarks.suite import MEASURES
    from mtserve_cli.root import fail

    unknown = sorted(set(only) - set(MEASURES))
    if unknown:
        fail(f"--only: unknown measure(s) {unknown}; the measures are {list(MEASURES)}")
    if out is not None and out.suffix == ".json":
        fail(f"--out: give a folder for the records of several measures, not a .json file ({out})")
    _run(list(only) or list(MEASURES), smoke, model, repeats, n, out, as_json, threads)
