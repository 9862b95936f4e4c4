"""The batch worker against the bare engine: a day's chunks run as the
Celery worker runs them (`batch.jobs.run_chunk`: read the log files, score
groups of conversations through the local scorer, write the answers to the
results database) against `Engine.predict` on the same conversations and
tasks in the same groups. The Celery and Redis hops are not in it: they
cost per chunk, not per conversation, and need the broker running."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from batch import jobs
from batch.local_scorer import LocalScorer
from batch.store import ResultStore
from batch.synth import generate_day, write_day
from mtserve.config import load_settings
from mtserve.engine import Request
from mtserve.inputs import input_from_dict
from mtserve.tasks import Channel
from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.harness import Result, alternate, ratio, summaries, timed
from mtserve_cli.benchmarks.workload import BenchConfig

WORKER, ENGINE = "batch worker (run_chunk, local scorer, SQLite)", "bare engine"


class _NoBroker:
    """An enqueuer that sends nothing: the benchmark runs the chunks itself."""

    def enqueue(self, job_id: str, chunks: Any) -> None:
        pass

    def finalize(self, job_id: str) -> None:
        pass

    def queue_depth(self) -> int | None:
        return None


def worker(cfg: BenchConfig) -> Result:
    cat = workload.catalogue()
    loaded = workload.load(cfg)
    engine = workload.engine(loaded, cfg, cat)
    folder = Path(tempfile.mkdtemp(prefix="worker-", dir=cfg.work_dir))
    day = generate_day(workload.DATE, cfg.n, seed=workload.SEED)
    logs = write_day(day, folder / "day").logs
    s = load_settings(overrides={"home": str(folder), "batch.scorer": "local", "batch.output_dir": str(folder / "out")}, env={})
    group = s.batch.conversations_per_call
    scorer = LocalScorer(engine, cat, loaded.id)
    convs = [(input_from_dict(c.record), Channel(c.record["channel"])) for c in day.conversations]
    groups = [
        [Request(cat.task(ref.name), inp) for inp, channel in convs[k : k + group] for ref in scorer.plan(channel, None)]
        for k in range(0, len(convs), group)
    ]

    stored: list[int] = []  # answers each worker repeat stored: the same work as the engine's, every time

    def run_worker() -> float:
        # A fresh results database each repeat: a chunk skips the answers already
        # stored for its (conversation, task, checkpoint), whichever job stored them.
        store = ResultStore(f"sqlite:///{tempfile.mkdtemp(prefix='results-', dir=folder)}/results.db")
        try:
            job = jobs.submit_job(s, store, _NoBroker(), logs=logs, date=workload.DATE, tasks=None)  # planning: not timed
            outcomes: list[jobs.ChunkOutcome] = []
            seconds = timed(lambda: outcomes.extend(jobs.run_chunk(store, scorer, job.job_id, c.chunk, group_size=group)
                                                    for c in store.chunks(job.job_id)))
            stored.append(sum(o.inserted for o in outcomes))
            return seconds
        finally:
            store.close()

    def run_engine() -> float:
        return timed(lambda: [engine.predict(g) for g in groups])

    run_engine()  # warm-up
    figures = alternate([(WORKER, run_worker), (ENGINE, run_engine)], cfg.repeats)
    n_requests = sum(len(g) for g in groups)
    # A rate is work over time: the worker's rate / the engine's is the engine's seconds / the worker's.
    return Result(
        measure="worker",
        question="the batch worker's conversations/s / the bare engine's on the same conversations and tasks",
        arms=summaries(figures, "s"),
        ratios=[ratio(figures, ENGINE, WORKER, "higher is better", goal=0.8)],
        config={"model": loaded.id, "dtype": "float32", "conversations": len(convs), "requests": n_requests, "group_size": group,
                "chunk_size": s.batch.chunk_size, "repeats": cfg.repeats, "smoke": cfg.smoke},
        details={"answers_stored_per_worker_repeat": stored, "engine_requests_per_repeat": n_requests},
        notes=["the ratio is the engine's seconds over the worker's, i.e. the worker's rate over the engine's"],
    )
