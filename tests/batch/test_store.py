"""The results store on SQLite and on PostgreSQL (for real; skipped only when
PostgreSQL on 127.0.0.1:5432 is unreachable): migrations, the upsert key,
chunk bookkeeping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from batch import schema
from batch.store import Job, ResultRow, ResultStore, make_engine, migrate, schema_revision
from mtserve.errors import NotFoundError, ValidationError

DATE = "2024-05-01"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    url = f"sqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    s = ResultStore(url)
    try:
        yield s
    finally:
        s.close()


def job(job_id: str = "j1", date: str = DATE, n_chunks: int = 2) -> Job:
    return Job(
        job_id=job_id, date=date, logs_dir="/logs", status="running", scorer="local", tasks=None, chunk_size=10,
        n_chunks=n_chunks, records=20, rejects=1, rejects_by_reason={"missing_id": 1}, rejects_file="/r.jsonl",
        ground_truth=None, rounds=0, submitted_at=time.time(),
    )


def chunk_dict(index: int) -> dict[str, Any]:
    return {"index": index, "folder": "/logs", "spans": [{"file": "a.jsonl", "format": "jsonl", "start": 1 + 10 * index,
            "stop": 11 + 10 * index, "offset": 0, "count": 10, "size": 1, "mtime_ns": 1}], "duplicates": []}


def row(cid: str, task: str = "id", version: int = 0, checkpoint: str = "ck", label: str = "yes", job_id: str = "j1") -> ResultRow:
    return ResultRow(cid, task, version, checkpoint, DATE, "im", job_id, 0, label, [label], {"yes": 0.7, "no": 0.3})


def test_migrations_are_idempotent_and_match_the_schema(store: ResultStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    migrate(store.engine)  # a second time: nothing to do
    assert schema_revision(store.engine) == "b0001"
    names = set(inspect(store.engine).get_table_names())
    assert {"batch_jobs", "batch_chunks", "batch_results", schema.VERSION_TABLE} <= names
    assert "alembic_version" not in names  # the registry's version table stays the registry's
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"version_table": schema.VERSION_TABLE}), schema.metadata)
    assert diff == []


def test_upsert_writes_each_key_once(store: ResultStore) -> None:
    store.create_job(job(), [chunk_dict(0), chunk_dict(1)])
    assert store.upsert_results([row("c1"), row("c2"), row("c1", task="hs")]) == 3
    # The same keys again (a redelivered chunk): nothing; a new key in the same statement: only it.
    assert store.upsert_results([row("c1", label="no"), row("c2"), row("c3")]) == 1
    # Another checkpoint or task version is another answer.
    assert store.upsert_results([row("c1", checkpoint="ck2"), row("c1", version=2)]) == 2
    assert store.count_results(date=DATE) == 6 and store.duplicate_keys(DATE) == 0
    first = [r for r in store.results(DATE) if r.key == ("c1", "id", 0, "ck")]
    assert [r.label for r in first] == ["yes"]  # DO NOTHING: the first answer stands
    assert store.existing_keys(["c1", "zz"]) == {("c1", "id", 0, "ck"), ("c1", "hs", 0, "ck"), ("c1", "id", 0, "ck2"), ("c1", "id", 2, "ck")}
    only = list(store.results(DATE, [("id", 0, "ck")]))
    assert sorted(r.conversation_id for r in only) == ["c1", "c2", "c3"]
    assert list(store.results(DATE, [])) == []


def test_many_rows_in_one_upsert(store: ResultStore) -> None:
    store.create_job(job(), [chunk_dict(0)])
    rows = [row(f"c{i}", task=t) for i in range(700) for t in ("id", "hs")]
    assert store.upsert_results(rows) == 1400
    assert store.upsert_results(rows) == 0


def test_chunk_lifecycle(store: ResultStore) -> None:
    store.create_job(job(), [chunk_dict(0), chunk_dict(1)])
    states = store.chunks("j1")
    assert [c.status for c in states] == ["pending", "pending"] and states[0].records == 10
    store.mark_enqueued("j1", [0, 1], new_round=True)
    assert store.job("j1").rounds == 1 and store.chunk("j1", 0).enqueued == 1
    before = store.start_chunk("j1", 0, "w1")
    assert before.status == "pending"
    assert store.chunk("j1", 0).status == "running" and store.chunk("j1", 0).attempts == 1
    store.upsert_results([row("c1")])
    inserted = store.finish_chunk(
        "j1", 0, rows=[row("c1"), row("c2")], conversations=2, expected=2, keys=[("id", 0, "ck")],
        errors=[{"conversation_id": "c9", "task": "id", "error": "boom"}], seconds=1.5,
    )
    assert inserted == 1
    done = store.chunk("j1", 0)
    assert done.status == "done" and done.written == 2 and done.keys == [("id", 0, "ck")] and done.errors == 1
    assert store.start_chunk("j1", 0, "w2").status == "done"  # a done chunk is left alone
    assert store.chunk("j1", 0).attempts == 1
    store.fail_chunk("j1", 1, "files changed", final=True)
    assert store.chunk("j1", 1).status == "failed" and store.chunk("j1", 1).settled
    store.fail_chunk("j1", 0, "late failure", final=True)
    assert store.chunk("j1", 0).status == "done"  # never un-done
    store.reopen_chunks("j1", [1])
    assert store.chunk("j1", 1).status == "pending"


def test_jobs_and_reports(store: ResultStore) -> None:
    store.create_job(job("a", "2024-04-30"), [])
    store.create_job(job("b", DATE), [])
    store.create_job(job("c", DATE), [])
    with pytest.raises(NotFoundError, match="no batch job 'zz'"):
        store.job("zz")
    assert store.latest_job(DATE, finished=True) is None
    store.save_report("b", "finished", {"tasks": {}}, time.time())
    assert store.latest_job(DATE, finished=True).job_id == "b"
    assert store.latest_job(DATE).job_id == "c"
    assert store.latest_job(DATE, finished=True, before=True) is None
    store.save_report("a", "finished", {"tasks": {"id": {}}}, time.time())
    assert store.latest_job(DATE, finished=True, before=True).job_id == "a"
    assert [j.job_id for j in store.jobs(DATE)] == ["c", "b"]


def test_refuses_memory_and_unknown_databases() -> None:
    with pytest.raises(ValidationError, match="in-memory"):
        make_engine("sqlite://")
    with pytest.raises(ValidationError, match="sqlite:/// or postgresql"):
        make_engine("mysql://u@h/db")
