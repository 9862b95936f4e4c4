"""Prompt format 1 against 2 on one engine build, one process (docs/benchmarks.md, 2026-12-04).

Format 2 asks a multi-label question with its label last. Two engines on the
same loaded default model (an untrained base: it has no format of its own),
one per format, score every classification task of each conversation in one
call and one task per conversation, alternated repeat by repeat. Prints a
JSON record with each format's cost (all / one) and its question tree's size.
Usage:

    .venv/bin/python docs/benchmarks/2026-12-04/formats_ab.py THREADS CONVERSATIONS REPEATS
"""

import json
import os
import runpy
import statistics
import sys
from pathlib import Path

import torch

from mtserve.config import load_settings
from mtserve.engine import Engine, Request
from mtserve.prompt import PromptStyle
from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.workload import BenchConfig

# The 2026-12-03 A/B script: its helpers are reused as they are.
_earlier = runpy.run_path(str(Path(__file__).parents[1] / "2026-12-03" / "engines_ab.py"))


def main() -> None:
    threads, n, repeats = (int(a) for a in sys.argv[1:4])
    torch.set_num_threads(threads)
    cfg = BenchConfig(settings=load_settings(), work_dir=Path("/tmp/formats-ab"), n=n, repeats=repeats)
    cat, loaded = workload.catalogue(), workload.load(cfg)
    budget = cfg.settings.inference.max_batch_tokens
    engines = {f"format {f}": Engine(loaded.model, loaded.tokenizer, cat.truncation, max_batch_tokens=budget, style=PromptStyle(f)) for f in (1, 2)}
    conversations = workload.conversations(n)
    arms = {"all": workload.all_tasks_requests(cat, conversations), "one": [[Request(workload.one_task(cat, c), c)] for c in conversations]}
    tree_tokens = {}
    for name, engine in engines.items():
        seen: list[int] = []
        inner = engine.model.forward

        def counting(*args, _seen=seen, _inner=inner, **kw):
            if kw["attention_mask"].dim() == 4:
                _seen.append(int(kw["input_ids"].shape[1]))
            return _inner(*args, **kw)

        engine.model.forward = counting
        for batch in arms["all"]:
            engine.predict(batch)  # warm-up, and the trees' sizes
        engine.model.forward = inner
        tree_tokens[name] = statistics.median(seen)
    times = _earlier["alternate"](engines, arms, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "threads": threads, "conversations": n, "repeats": repeats, "tree_tokens_median": tree_tokens,
        "seconds_per_conversation": times, "median": med,
        "cost (all/one)": {e: med[f"{e} all"] / med[f"{e} one"] for e in engines},
        "paired cost": {e: [a / o for a, o in zip(times[f"{e} all"], times[f"{e} one"])] for e in engines},
        "all, format 2 / format 1": med["format 2 all"] / med["format 1 all"],
        "load_average": list(os.getloadavg()),
    }, indent=1))


if __name__ == "__main__":
    main()
