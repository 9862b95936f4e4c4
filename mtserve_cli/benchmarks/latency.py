"""Latency of one request: a Classify over real gRPC (the secured default,
and plaintext beside it), the engine alone, and the floor, one bare forward
pass of the same prompt (tokenized beforehand, last position's logits only:
what a single-token answer needs)."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch

from mtserve.engine import Request
from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.harness import Result, ratio, summaries, timed
from mtserve_cli.benchmarks.stack import serving
from mtserve_cli.benchmarks.workload import BenchConfig

SECURED, PLAIN, ENGINE, BARE = "Classify over gRPC (TLS + token)", "Classify over gRPC (plaintext)", "engine.predict, one request", "bare forward pass"


def interleaved_p50(arms: list[tuple[str, Callable[[int], object]]], n: int, repeats: int) -> dict[str, list[float]]:
    """Per repeat, each arm's median latency over requests 0 .. n-1, the arms
    taking turns request by request (in alternating order), so that a load
    change on the machine reaches every arm within a request of the others."""
    figures: dict[str, list[float]] = {name: [] for name, _ in arms}
    for r in range(repeats):
        seconds: dict[str, list[float]] = {name: [] for name, _ in arms}
        for k in range(n):
            for name, fn in (arms if (r * n + k) % 2 == 0 else arms[::-1]):
                seconds[name].append(timed(functools.partial(fn, k)))
        for name, values in seconds.items():
            figures[name].append(statistics.median(values))
    return figures


def latency(cfg: BenchConfig) -> Result:
    cat = workload.catalogue()
    inputs = workload.conversations(cfg.n)
    tasks = [workload.one_task(cat, inp) for inp in inputs]
    loaded = workload.load(cfg)
    engine = workload.engine(loaded, cfg, cat)
    prompts = [torch.tensor([engine.renderer.render(t, inp).prompt], device=engine.device) for t, inp in zip(tasks, inputs)]
    checkpoint = workload.checkpoint_path(cfg)

    def bare(k: int) -> Any:
        with torch.inference_mode():
            return loaded.model(input_ids=prompts[k], logits_to_keep=1).logits

    with ExitStack() as stack:
        secured = stack.enter_context(serving(checkpoint, cat, inputs[0], work_dir=cfg.work_dir, secured=True))
        plain = stack.enter_context(serving(checkpoint, cat, inputs[0], work_dir=cfg.work_dir, secured=False))
        secured_client = stack.enter_context(secured.client())
        plain_client = stack.enter_context(plain.client())
        arms: list[tuple[str, Callable[[int], object]]] = [
            (SECURED, lambda k: secured_client.classify(tasks[k].name, inputs[k])),
            (BARE, bare),
            (ENGINE, lambda k: engine.predict([Request(tasks[k], inputs[k])])),
            (PLAIN, lambda k: plain_client.classify(tasks[k].name, inputs[k])),
        ]
        interleaved_p50(arms, 1, 1)  # warm-up: connections, allocator
        figures = interleaved_p50(arms, cfg.n, cfg.repeats)
    return Result(
        measure="latency",
        question="one Classify over gRPC, p50 / one bare forward pass of the same prompt, p50",
        arms=summaries(figures, "s (p50)"),
        ratios=[
            ratio(figures, SECURED, BARE, "lower is better", goal=1.1),
            ratio(figures, PLAIN, BARE, "lower is better", goal=1.1),
            ratio(figures, ENGINE, BARE, "lower is better"),
        ],
        config={"model": loaded.id, "dtype": "float32", "requests_per_repeat": cfg.n, "repeats": cfg.repeats, "smoke": cfg.smoke,
                "security": {"secured arm": "tls + bearer token (the defaults)", "plaintext arm": "tls.enabled=false, auth.enabled=false"}},
        details={"tasks": sorted({t.name for t in tasks}), "prompt_tokens_median": statistics.median(p.shape[1] for p in prompts)},
    )
