"""Two `mtserve worker` processes on one Redis share one day's job: both take
chunks, no chunk runs twice, and every (conversation, task) is stored
exactly once. On one machine here; across machines it is the same with a
shared results database and log folder (docs/batch.md, "More machines").

A chunk's message goes to one worker at a time (prefetch 1, acks late):
"no chunk runs twice" holds as long as no chunk outlasts the visibility
timeout, which this test sets far above a chunk's run time."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.routing import applicable
from batch.synth import generate_day, write_day
from mtserve.tasks import Channel, builtin_catalogue_path, load_catalogue

DATE = "2024-06-03"
CATALOGUE = load_catalogue(builtin_catalogue_path("hotel"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """The workers' results database: a SQLite file (one machine), or a
    fresh PostgreSQL schema (what several machines share)."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def test_two_workers_share_a_day_with_no_duplicate_results(
    tmp_path: Path, tiny_llama_dir: Path, local_redis: str, database_url: str | None,
    make_batch_env: Callable[..., Any], wait_for: Callable[..., Any],
) -> None:
    env = make_batch_env(
        tmp_path / "env", tiny_llama_dir, broker_url=local_redis, database_url=database_url,
        # 8 chunks of 8 conversations; a short pause after each committed group
        # keeps a chunk running long enough that the idle worker takes the next.
        chunk_size=8, conversations_per_call=4, debug_pause_seconds=0.3,
        # Far above a chunk's run time: a redelivery here would be a bug, not the timeout.
        visibility_timeout=600, chunk_time_limit=300, stall_seconds=900,
    )
    try:
        day = generate_day(DATE, 64, 7)
        logs = write_day(day, tmp_path / "day").logs
        workers = [env.start_worker(name, ready=False) for name in ("w1", "w2")]
        for w in workers:
            w.wait_ready()  # both consume before the job is sent, so neither starts with the queue to itself
        job = json.loads(env.cli("batch", "submit", "--logs", str(logs), "--date", DATE, "--json").stdout)["job_id"]
        env.cli("batch", "status", job, "--wait", "--timeout", "600")

        store = env.store()
        pairs = Counter((row.conversation_id, row.task) for row in store.results(DATE))
        want = {(c.id, t.name) for c in day.conversations for t in applicable(CATALOGUE.tasks, Channel(c.record["channel"]), None)}
        assert set(pairs) == want
        assert set(pairs.values()) == {1}, "a (conversation, task) was stored twice"
        assert store.duplicate_keys(DATE) == 0

        chunks = store.chunks(job)
        assert len(chunks) == 8 and {c.status for c in chunks} == {"done"}
        assert [c.attempts for c in chunks] == [1] * 8, "a chunk ran twice"
        by_worker = Counter((c.worker or "").split("/", 1)[-1].split("@", 1)[0] for c in chunks)
        assert set(by_worker) == {"w1", "w2"}, by_worker  # both workers took part

        report = store.job(job).report
        assert report is not None and report["complete"] and report["results"] == report["expected_results"] == len(want)
        assert report["chunks"]["runs"] == report["chunks"]["total"] == 8
    finally:
        env.cleanup()
