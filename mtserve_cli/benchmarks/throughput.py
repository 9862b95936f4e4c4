"""Throughput of the service (secured, the defaults): the same Classify calls
sent by 8 concurrent clients against one client sending them one at a
time. Concurrent calls meet in the batcher, so this is the batching gain
(or loss: padded rows are computed)."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from typing import Any

from mtserve.inputs import Input
from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.harness import Result, alternate, ratio, summaries
from mtserve_cli.benchmarks.stack import Served, serving
from mtserve_cli.benchmarks.workload import BenchConfig

CLIENTS = 8
CALLS_PER_INPUT = 4  # each repeat sends n * 4 calls: enough for every client to keep a call in flight


def rate(served_clients: list[Any], calls: list[tuple[str, Input]]) -> float:
    """Calls per second when the clients share the calls round-robin, all starting together."""
    start = threading.Barrier(len(served_clients) + 1)
    failures: list[BaseException] = []

    def run(c: int) -> None:
        start.wait()
        try:
            for task, inp in calls[c :: len(served_clients)]:
                served_clients[c].classify(task, inp)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(len(served_clients))]
    for t in threads:
        t.start()
    start.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    if failures:
        raise failures[0]
    return len(calls) / seconds


def throughput(cfg: BenchConfig) -> Result:
    cat = workload.catalogue()
    inputs = workload.conversations(cfg.n)
    calls = [(workload.one_task(cat, inp).name, inp) for inp in inputs] * CALLS_PER_INPUT
    many, one = f"{CLIENTS} clients", "1 client"
    with ExitStack() as stack:
        served: Served = stack.enter_context(serving(workload.checkpoint_path(cfg), cat, inputs[0], work_dir=cfg.work_dir))
        clients = [stack.enter_context(served.client()) for _ in range(CLIENTS)]
        rate(clients, calls[:CLIENTS])  # warm-up: every channel connected
        figures = alternate([(many, lambda: rate(clients, calls)), (one, lambda: rate(clients[:1], calls))], cfg.repeats)
        batch = served.settings.inference
    return Result(
        measure="throughput",
        question=f"the service's calls/s at {CLIENTS} concurrent clients / at 1 client",
        arms=summaries(figures, "calls/s"),
        # The goal on CPU: never worse than one at a time (>= 1.5x on a GPU).
        ratios=[ratio(figures, many, one, "higher is better", goal=1.0)],
        config={"model": workload.checkpoint_path(cfg).name, "dtype": "float32", "calls_per_repeat": len(calls), "repeats": cfg.repeats,
                "smoke": cfg.smoke, "security": "tls + bearer token (the defaults)",
                "batching": {"max_batch_requests": batch.max_batch_requests, "max_batch_tokens": batch.max_batch_tokens, "max_wait_ms": batch.max_wait_ms}},
        details={"tasks": sorted({t for t, _ in calls})},
    )
