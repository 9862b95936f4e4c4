"""Before/after A/B of the engine in one process (docs/benchmarks.md, 2026-12-03).

The engine of commit 994d59a (one padded row per question; check it out with
`git worktree add /work/before 994d59a`) and this tree's (token trees) score
the same conversations on the same loaded model, alternated repeat by repeat,
after their answers are compared. Prints a JSON record. Usage:

    .venv/bin/python docs/benchmarks/2026-12-03/engines_ab.py THREADS CONVERSATIONS REPEATS [BEFORE_ENGINE_PY]
"""

import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from mtserve.config import load_settings
from mtserve.engine import Engine, Request
from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.workload import BenchConfig


def load_engine_class(path: str) -> type:
    spec = importlib.util.spec_from_file_location("engine_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["engine_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.Engine


def compare(after: Engine, before: Engine, batches: list) -> tuple[int, int, float]:
    """Answers alike, answers in all, largest probability difference."""
    same = total = 0
    worst = 0.0
    for batch in batches:
        for a, b in zip(after.predict(batch), before.predict(batch), strict=True):
            total += 1
            same += a.label == b.label and a.labels == b.labels and a.text == b.text
            worst = max([worst] + [abs(x.probability - y.probability) for x, y in zip(a.scores, b.scores, strict=True)])
    return same, total, worst


def both_engines(argv: list[str]) -> tuple[int, int, int, object, dict[str, Engine]]:
    """THREADS N REPEATS [BEFORE_ENGINE_PY] -> those, the catalogue and both engines on one loaded model."""
    threads, n, repeats = (int(a) for a in argv[:3])
    before_path = argv[3] if len(argv) > 3 else "/work/before/mtserve/engine.py"
    torch.set_num_threads(threads)
    cfg = BenchConfig(settings=load_settings(), work_dir=Path("/tmp/engines-ab"), n=n, repeats=repeats)
    cat, loaded = workload.catalogue(), workload.load(cfg)
    budget = cfg.settings.inference.max_batch_tokens
    engines = {
        "before": load_engine_class(before_path)(loaded.model, loaded.tokenizer, cat.truncation, max_batch_tokens=budget),
        "after": Engine(loaded.model, loaded.tokenizer, cat.truncation, max_batch_tokens=budget),
    }
    return threads, n, repeats, cat, engines


def alternate(engines: dict[str, Engine], arms: dict[str, list], repeats: int, *, per_batch: bool = True) -> dict[str, list[float]]:
    """Seconds of every engine on every arm (a list of predict batches), engine
    by engine and arm by arm within each repeat; per batch, or the arm's total."""
    times: dict[str, list[float]] = {f"{e} {a}": [] for e in engines for a in arms}
    for _ in range(repeats):
        for name, engine in engines.items():
            for arm, batches in arms.items():
                start = time.perf_counter()
                for batch in batches:
                    engine.predict(batch)
                times[f"{name} {arm}"].append((time.perf_counter() - start) / (len(batches) if per_batch else 1))
    return times


def main() -> None:
    threads, n, repeats, cat, engines = both_engines(sys.argv[1:])
    conversations = workload.conversations(n)
    arms = {"all": workload.all_tasks_requests(cat, conversations), "one": [[Request(workload.one_task(cat, c), c)] for c in conversations]}
    for engine in engines.values():
        engine.predict(arms["all"][0])  # warm-up
    same, total, worst = compare(engines["after"], engines["before"], arms["all"])
    times = alternate(engines, arms, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "threads": threads, "conversations": n, "repeats": repeats,
        "requests_per_conversation": statistics.median(len(b) for b in arms["all"]),
        "answers_same": f"{same}/{total}", "max_probability_difference": worst,
        "seconds_per_conversation": times, "median": med,
        "after_all/before_all": med["after all"] / med["before all"],
        "cost before (all/one)": med["before all"] / med["before one"],
        "cost after (all/one)": med["after all"] / med["after one"],
        "load_average": list(os.getloadavg()),
    }, indent=1))


if __name__ == "__main__":
    main()
