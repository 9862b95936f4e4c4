"""Before/after A/B of the engine in one process (docs/benchmarks.md, 2026-12-04).

The engine of commit 7f74ed3 (check it out with `git worktree add /work/before
7f74ed3`) and this tree's score the same batches on the same loaded model,
alternated repeat by repeat, after their answers are compared. What changed:
level 1 bounds its padding like level 2 (inputs of unlike length no longer
share a pass), the tree pass reads the prefix cache instead of copying it,
and greedy decoding copies its cache only when a row finishes. Arms:

    batch of 8   8 different conversations, one classification task each, one
                 predict call: what the batcher hands the engine when 8
                 clients each send one Classify
    all + gen    every applicable task, generation included, of each mixed
                 input (conversations, an e-mail, a review), one call each

Prints a JSON record. Usage:

    .venv/bin/python docs/benchmarks/2026-12-04/engines_ab.py THREADS N REPEATS [BEFORE_ENGINE_PY]
"""

import json
import os
import runpy
import statistics
import sys
from pathlib import Path

from mtserve.engine import Request
from mtserve_cli.benchmarks import workload

# The 2026-12-03 A/B script: its helpers are reused as they are.
_earlier = runpy.run_path(str(Path(__file__).parents[1] / "2026-12-03" / "engines_ab.py"))
compare = _earlier["compare"]


def main() -> None:
    threads, n, repeats, cat, engines = _earlier["both_engines"](sys.argv[1:])
    conversations = workload.conversations(8)
    mixed = workload.mixed_inputs(n)
    arms = {
        "batch of 8": [[Request(workload.one_task(cat, c), c) for c in conversations]],
        "all + gen": [[Request(t, inp) for t in workload.applicable(cat, inp, generation=True)] for inp in mixed],
    }
    for engine in engines.values():
        engine.predict(arms["batch of 8"][0])  # warm-up
    answers = {arm: compare(engines["after"], engines["before"], batches) for arm, batches in arms.items()}
    times = _earlier["alternate"](engines, arms, repeats, per_batch=False)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "threads": threads, "inputs": len(mixed), "repeats": repeats,
        "answers_same": {arm: f"{s}/{t}" for arm, (s, t, _) in answers.items()},
        "max_probability_difference": {arm: w for arm, (_, _, w) in answers.items()},
        "seconds_per_arm": times, "median": med,
        "after/before": {arm: med[f"after {arm}"] / med[f"before {arm}"] for arm in arms},
        "paired after/before": {arm: [a / b for a, b in zip(times[f"after {arm}"], times[f"before {arm}"])] for arm in arms},
        "load_average": list(os.getloadavg()),
    }, indent=1))


if __name__ == "__main__":
    main()
