"""Redis crashes in the middle of a job and comes back: the job still
finishes, every (conversation, task) exactly once.

The machine's Redis keeps nothing on disk, so this test runs its own
`redis-server` with append-only persistence (fsync every second) on a free
port, and kills it with SIGKILL: what reached the file survives, the last
second may not (a message popped but not yet recorded as unacked is lost).
The worker reconnects by itself; `batch status --wait` reconciles the store
against the plan and re-enqueues what went missing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batch.routing import applicable
from batch.synth import generate_day, write_day
from mtserve.tasks import Channel, builtin_catalogue_path, load_catalogue

DATE = "2024-07-01"
CATALOGUE = load_catalogue(builtin_catalogue_path("hotel"))


def test_job_survives_a_redis_restart(
    tmp_path: Path, tiny_llama_dir: Path, own_redis: Any, make_batch_env: Callable[..., Any], wait_for: Callable[..., Any]
) -> None:
    env = make_batch_env(
        tmp_path / "env", tiny_llama_dir, broker_url=own_redis.url,
        chunk_size=10, conversations_per_call=5, debug_pause_seconds=0.5,
    )
    try:
        day = generate_day(DATE, 60, 8)
        logs = write_day(day, tmp_path / "day").logs
        env.start_worker("through-restart")
        job = json.loads(env.cli("batch", "submit", "--logs", str(logs), "--date", DATE, "--json").stdout)["job_id"]
        store = env.store()

        def some_done() -> bool:
            states = [c.status for c in store.chunks(job)]
            return "done" in states and states.count("done") < len(states)

        wait_for(some_done, 120, "the job to be part-way through")
        own_redis.crash()
        time.sleep(1.5)
        own_redis.start()  # same port, same folder: the append-only file is replayed

        out = env.cli("batch", "status", job, "--wait", "--timeout", "300", "--json")
        assert json.loads(out.stdout)["finished"], out.stderr
        pairs = Counter((r.conversation_id, r.task) for r in store.results(DATE))
        want = {(c.id, t.name) for c in day.conversations for t in applicable(CATALOGUE.tasks, Channel(c.record["channel"]), None)}
        assert set(pairs) == want and set(pairs.values()) == {1}
        report = store.job(job).report
        assert report["status"] == "finished" and report["complete"] and report["results"] == len(want)
    finally:
        env.cleanup()


def test_job_survives_redis_losing_everything(
    tmp_path: Path, tiny_llama_dir: Path, own_redis: Any, make_batch_env: Callable[..., Any], wait_for: Callable[..., Any]
) -> None:
    """Redis comes back empty (as the machine's Redis, which keeps nothing on
    disk, would): the queued chunks, the unacknowledged one and the chord's
    counter are gone. Only the results store knows what is missing, and
    `batch status --wait` re-enqueues it once the job has stalled."""
    env = make_batch_env(
        tmp_path / "env", tiny_llama_dir, broker_url=own_redis.url,
        chunk_size=10, conversations_per_call=5, debug_pause_seconds=0.5, stall_seconds=6,
    )
    try:
        day = generate_day(DATE, 30, 9)
        logs = write_day(day, tmp_path / "day").logs
        env.start_worker("amnesia")
        job = json.loads(env.cli("batch", "submit", "--logs", str(logs), "--date", DATE, "--json").stdout)["job_id"]
        store = env.store()
        wait_for(lambda: [c.status for c in store.chunks(job)].count("done") == 1, 120, "the first chunk to be done")
        own_redis.crash()
        for f in own_redis.folder.rglob("appendonly*"):  # lose everything
            f.unlink() if f.is_file() else None
        own_redis.start()

        out = env.cli("batch", "status", job, "--wait", "--timeout", "300", "--json")
        assert json.loads(out.stdout)["finished"], out.stderr
        job_row = store.job(job)
        assert job_row.rounds >= 2  # a reconcile round re-sent the lost chunks
        pairs = Counter((r.conversation_id, r.task) for r in store.results(DATE))
        want = {(c.id, t.name) for c in day.conversations for t in applicable(CATALOGUE.tasks, Channel(c.record["channel"]), None)}
        assert set(pairs) == want and set(pairs.values()) == {1}
        assert job_row.report["complete"]
    finally:
        env.cleanup()
