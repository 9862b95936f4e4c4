"""`mtserve bench ...`: measurements reported as ratios against a baseline
measured in the same run (never absolute timings in tests)."""

from __future__ import annotations

import json
import time

import typer

from mtserve_cli.root import app, settings

bench_app = typer.Typer(help="Benchmarks (long; never part of the test suite).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("engine")
def engine_bench(
    n: int = typer.Option(8, "--n", help="Synthetic conversations to score."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint folder or id (default: the prepared default model)."),
    repeats: int = typer.Option(2, "--repeats", help="Timed repetitions of each arm (the best is kept)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Scoring every applicable hotel task on each conversation: the engine's
    shared-prefix batch (one call per conversation) against the same requests
    sent one task at a time, on the same model in the same run. Answers must
    agree; the speed-up is reported as a ratio."""
    from batch.synth import generate_day
    from mtserve.engine import Engine, Request
    from mtserve.models import load_model_folder, resolve_model_path
    from mtserve.tasks import builtin_catalogue_path, load_catalogue

    s = settings()
    cat = load_catalogue(builtin_catalogue_path("hotel"))
    loaded = load_model_folder(resolve_model_path(model, s.checkpoints_root), device=s.device, dtype=s.dtype, root=s.checkpoints_root)
    engine = Engine(loaded.model, loaded.tokenizer, cat.truncation, max_batch_tokens=s.inference.max_batch_tokens)
    day = generate_day("2026-01-01", n, seed=7)
    convs = [c.record for c in day.conversations]
    from mtserve.inputs import input_from_dict

    inputs = [input_from_dict(r) for r in convs]
    per_conv = [[Request(t, inp) for t in cat.tasks if not t.is_generation and t.applies_to(inp.kind, inp.channel)] for inp in inputs]
    n_requests = sum(len(r) for r in per_conv)
    prompt_tokens = sum(len(engine.renderer.render(r.task, r.input, ask=r.task.labels[0] if r.task.taxonomy.value == "multilabel" else None).prompt) for rs in per_conv for r in rs)

    def shared() -> list:
        return [p for reqs in per_conv for p in engine.predict(reqs)]

    def one_by_one() -> list:
        return [engine.predict([r])[0] for reqs in per_conv for r in reqs]

    shared()  # warm-up (allocator, first-call overheads)
    timings: dict[str, float] = {}
    answers: dict[str, list] = {}
    for name, arm in (("one task per call", one_by_one), ("shared prefix, one call per conversation", shared)):
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            answers[name] = arm()
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    a, b = answers.values()
    agree = all(x.label == y.label and all(abs(p.probability - q.probability) <= 1e-5 for p, q in zip(x.scores, y.scores)) for x, y in zip(a, b))
    base, fast = timings["one task per call"], timings["shared prefix, one call per conversation"]
    result = {
        "model": loaded.id,
        "conversations": n,
        "requests": n_requests,
        "prompt_tokens_if_unshared": prompt_tokens,
        "seconds": timings,
        "requests_per_second": {k: n_requests / v for k, v in timings.items()},
        "speedup": base / fast,
        "answers_agree_1e-5": agree,
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"model {loaded.id}: {n} synthetic conversations, {n_requests} (conversation, task) requests")
    for k, v in timings.items():
        typer.echo(f"  {k:45s} {v:8.2f} s   {n_requests / v:7.2f} requests/s")
    typer.echo(f"  speed-up of prefix sharing: {base / fast:.2f}x   answers agree to 1e-5: {agree}")
