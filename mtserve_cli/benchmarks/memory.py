"""Peak memory: every task of the catalogue on a batch of inputs (the
batcher's full batches of max_batch_requests) against one task per input.
Each arm runs in its own subprocess, so a peak is that arm's alone
(ru_maxrss never goes down within a process).

    python -m mtserve_cli.benchmarks.memory ARM CHECKPOINT ROOT N MAX_REQUESTS THREADS   (the child; prints JSON)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any

from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.harness import Result, alternate, ratio, summaries
from mtserve_cli.benchmarks.workload import BenchConfig

ALL, ONE = "every applicable task (all 18 between the inputs)", "one task per input"
MIB = 1024 * 1024


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # Linux: KiB


def child(arm: str, checkpoint: str, root: str, n: int, max_requests: int, threads: int) -> dict[str, Any]:
    """One arm in this (fresh) process: load, score, report the peaks."""
    import torch

    from mtserve.engine import Engine, Request
    from mtserve.models import load_model_folder

    if threads:
        torch.set_num_threads(threads)
    cat = workload.catalogue()
    loaded = load_model_folder(checkpoint, device="cpu", dtype="float32", root=root)
    engine = Engine(loaded.model, loaded.tokenizer, cat.truncation, style=loaded.manifest.prompt_style)
    # The weights are memory-mapped and paged in by the first pass that reads
    # them: read them all now, so "after load" counts the whole model and the
    # increment is the scoring's own (before 2026-12-04 it held the weights'
    # ~490 MiB of lazy pages too).
    with torch.inference_mode():
        for parameter in loaded.model.parameters():
            parameter.sum()
    after_load = _peak_rss_mib()
    inputs = workload.mixed_inputs(n)
    if arm == "all":
        requests = [Request(t, inp) for inp in inputs for t in workload.applicable(cat, inp, generation=True)]
    else:
        requests = [Request(workload.one_task(cat, inp), inp) for inp in inputs]
    for k in range(0, len(requests), max_requests):  # what the batcher hands the engine under load
        engine.predict(requests[k : k + max_requests])
    return {"peak_rss_mib": _peak_rss_mib(), "peak_rss_after_load_mib": after_load, "requests": len(requests),
            "tasks": len({r.task.name for r in requests})}


def _run_child(arm: str, cfg: BenchConfig, seen: dict[str, dict[str, Any]]) -> float:
    args = [arm, str(workload.checkpoint_path(cfg)), str(cfg.settings.checkpoints_root), str(cfg.n), str(cfg.settings.inference.max_batch_requests),
            str(cfg.threads or 0)]
    out = subprocess.run([sys.executable, "-m", "mtserve_cli.benchmarks.memory", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the memory benchmark's {arm} arm failed:\n{out.stderr[-4000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    seen[arm] = report
    return float(report["peak_rss_mib"])


def memory(cfg: BenchConfig) -> Result:
    seen: dict[str, dict[str, Any]] = {}
    figures = alternate([(ALL, lambda: _run_child("all", cfg, seen)), (ONE, lambda: _run_child("one", cfg, seen))], cfg.repeats)
    return Result(
        measure="memory",
        question="peak RSS of a process scoring every task on a batch of inputs / one task per input",
        arms=summaries(figures, "MiB"),
        ratios=[ratio(figures, ALL, ONE, "lower is better", goal=1.1)],
        config={"model": workload.checkpoint_path(cfg).name, "dtype": "float32", "inputs": len(workload.mixed_inputs(cfg.n)),
                "max_batch_requests": cfg.settings.inference.max_batch_requests, "repeats": cfg.repeats, "smoke": cfg.smoke},
        details={"all_tasks_arm": seen["all"], "one_task_arm": seen["one"],
                 "increment_over_loaded_model_mib": {arm: r["peak_rss_mib"] - r["peak_rss_after_load_mib"] for arm, r in seen.items()}},
    )


if __name__ == "__main__":
    arm, checkpoint, root, n, max_requests, threads = sys.argv[1:7]
    print(json.dumps(child(arm, checkpoint, root, int(n), int(max_requests), int(threads))))
