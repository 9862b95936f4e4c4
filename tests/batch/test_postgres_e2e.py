"""A job end to end with the results store on PostgreSQL (a schema of its
own in the `test` database, dropped afterwards): a real worker, the same day
twice, no duplicate rows. Skipped only when PostgreSQL is unreachable."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.synth import generate_day, write_day

pytestmark = pytest.mark.postgres
DATE = "2024-08-01"


def test_a_job_on_postgresql(
    tmp_path: Path, tiny_llama_dir: Path, local_redis: str, postgres_url: str, make_batch_env: Callable[..., Any]
) -> None:
    env = make_batch_env(tmp_path / "env", tiny_llama_dir, broker_url=local_redis, database_url=postgres_url, chunk_size=10)
    try:
        logs = write_day(generate_day(DATE, 20, 12, bad_records=2), tmp_path / "day").logs
        env.start_worker("pg", env={"MTSERVE_BATCH__WORKER_CONCURRENCY": "2"})  # two processes writing at once
        first = json.loads(env.cli("batch", "submit", "--logs", str(logs), "--date", DATE, "--wait", "--json").stdout)
        assert first["status"] == "finished" and first["report"]["complete"]
        store = env.store()
        assert store.dialect == "postgresql"
        n = store.count_results(date=DATE)
        assert n == first["report"]["expected_results"] > 0 and first["report"]["rejects"]["total"] == 2
        second = json.loads(env.cli("batch", "submit", "--logs", str(logs), "--date", DATE, "--wait", "--json").stdout)
        assert second["status"] == "finished"
        assert store.count_results(date=DATE) == n and store.duplicate_keys(DATE) == 0
        assert set(Counter((r.conversation_id, r.task) for r in store.results(DATE)).values()) == {1}
    finally:
        env.cleanup()
