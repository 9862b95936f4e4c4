"""A worker SIGKILLed in the middle of a chunk: the chunk comes back (Redis
redelivers the unacknowledged message after the visibility timeout, or the
worker's parent requeues it when only its pool process died), a new worker
finishes the job, and every (conversation, task) is stored exactly once.

"In the middle" is observed, not timed: the test kills once the results
store holds some, but not all, of a chunk's results. batch.debug_pause_seconds
makes that window wide (a pause after each committed group of conversations).
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from batch import schema
from batch.routing import applicable
from batch.synth import generate_day, write_day
from mtserve.tasks import Channel, builtin_catalogue_path, load_catalogue

DATE = "2024-06-01"
CATALOGUE = load_catalogue(builtin_catalogue_path("hotel"))


def half_done_chunk(store: Any, job_id: str) -> int | None:
    """A chunk that is running and has some results stored, if any."""
    c, r = schema.chunks.c, schema.results.c
    with store.engine.connect() as conn:
        running = [row[0] for row in conn.execute(select(c.chunk_index).where(c.job_id == job_id, c.status == "running"))]
        for index in running:
            n = conn.execute(select(func.count()).where(r.job_id == job_id, r.chunk_index == index)).scalar_one()
            if n:
                return index
    return None


def check_exactly_once(env: Any, day: Any, job_id: str) -> dict:
    store = env.store()
    pairs = Counter((row.conversation_id, row.task) for row in store.results(DATE))
    want = {(c.id, t.name) for c in day.conversations for t in applicable(CATALOGUE.tasks, Channel(c.record["channel"]), None)}
    assert set(pairs) == want
    assert set(pairs.values()) == {1}, "a (conversation, task) was stored twice"
    assert store.duplicate_keys(DATE) == 0
    job = store.job(job_id)
    assert job.status == "finished" and job.report is not None and job.report["complete"]
    return job.report


def submit(env: Any, logs: Path) -> str:
    return json.loads(env.cli("batch", "submit", "--logs", str(logs), "--date", DATE, "--json").stdout)["job_id"]


def test_sigkill_the_whole_worker_mid_chunk(
    tmp_path: Path, tiny_llama_dir: Path, local_redis: str, make_batch_env: Callable[..., Any], wait_for: Callable[..., Any]
) -> None:
    env = make_batch_env(
        tmp_path / "env", tiny_llama_dir, broker_url=local_redis,
        chunk_size=15, conversations_per_call=5, debug_pause_seconds=0.7,
    )
    try:
        day = generate_day(DATE, 45, 3)
        logs = write_day(day, tmp_path / "day").logs
        first = env.start_worker("doomed")
        job = submit(env, logs)
        store = env.store()
        index = wait_for(lambda: half_done_chunk(store, job), 120, "a chunk with part of its results stored")
        first.kill(signal.SIGKILL)  # the worker and its pool process, no chance to ack or clean up
        first.proc.wait(10)
        killed = store.chunk(job, index)
        assert killed.status == "running" and 0 < store.count_results(job_id=job) < 45 * 11

        env.start_worker("rescuer", env={"MTSERVE_BATCH__DEBUG_PAUSE_SECONDS": "0"})
        env.cli("batch", "status", job, "--wait", "--timeout", "240")
        report = check_exactly_once(env, day, job)
        assert store.chunk(job, index).attempts >= 2  # it ran again, and its second run added only what was missing
        assert report["chunks"]["runs"] > report["chunks"]["total"] and report["results"] == report["expected_results"]
    finally:
        env.cleanup()


@pytest.mark.slow
def test_sigkill_the_pool_process_mid_chunk(
    tmp_path: Path, tiny_llama_dir: Path, local_redis: str, make_batch_env: Callable[..., Any], wait_for: Callable[..., Any]
) -> None:
    """Only the pool process dies: task_reject_on_worker_lost requeues the
    chunk at once, and the same worker's new pool process finishes the job."""
    env = make_batch_env(
        tmp_path / "env", tiny_llama_dir, broker_url=local_redis,
        chunk_size=15, conversations_per_call=5, debug_pause_seconds=0.7,
    )
    try:
        day = generate_day(DATE, 30, 4)
        logs = write_day(day, tmp_path / "day").logs
        worker = env.start_worker("survivor")
        job = submit(env, logs)
        store = env.store()
        index = wait_for(lambda: half_done_chunk(store, job), 120, "a chunk with part of its results stored")
        (child,) = worker.children()
        os.kill(child, signal.SIGKILL)
        env.cli("batch", "status", job, "--wait", "--timeout", "240")
        check_exactly_once(env, day, job)
        assert store.chunk(job, index).attempts >= 2
        assert "WorkerLostError" in worker.log() or "exited by signal" in worker.log()
        assert worker.proc.poll() is None  # the worker itself lived on
    finally:
        env.cleanup()
