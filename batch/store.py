"""The results store: jobs, chunk status and results in a SQL database
(SQLite file by default, PostgreSQL by URL), plain Python over SQLAlchemy.

Results are upserted with INSERT ... ON CONFLICT DO NOTHING on the key
(conversation_id, task, task_version, checkpoint), on both dialects, so a
chunk that runs twice (redelivered after a worker died, re-enqueued by
reconcile, or the same day submitted again) writes nothing twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, func, select, tuple_, update
from sqlalchemy.engine import make_url

from batch import schema as t
from mtserve import db
from mtserve.errors import NotFoundError

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.dialects import postgresql, sqlite

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x6D74_6274  # "mtbt": one process migrates at a time

# A result key as stored: (task, task_version, checkpoint) answered for a conversation.
AnswerKey = tuple[str, int, str]


def make_engine(url: str) -> Engine:
    return db.make_engine(url, setting="batch.results_database_url")


def migrate(engine: Engine) -> None:
    db.migrate(engine, MIGRATIONS, lock_id=_PG_MIGRATION_LOCK)


def schema_revision(engine: Engine) -> str | None:
    return db.schema_revision(engine, t.VERSION_TABLE)


@dataclass(frozen=True)
class Job:
    job_id: str
    date: str
    logs_dir: str
    status: str
    scorer: str
    tasks: tuple[str, ...] | None
    chunk_size: int
    n_chunks: int
    records: int
    rejects: int
    rejects_by_reason: dict[str, int]
    rejects_file: str
    ground_truth: str | None
    rounds: int
    submitted_at: float
    finished_at: float | None = None
    report: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        m = row._mapping
        return cls(
            job_id=m["job_id"],
            date=m["date"],
            logs_dir=m["logs_dir"],
            status=m["status"],
            scorer=m["scorer"],
            tasks=None if m["tasks_json"] is None else tuple(json.loads(m["tasks_json"])),
            chunk_size=m["chunk_size"],
            n_chunks=m["n_chunks"],
            records=m["records"],
            rejects=m["rejects"],
            rejects_by_reason=json.loads(m["rejects_json"]),
            rejects_file=m["rejects_file"],
            ground_truth=m["ground_truth"],
            rounds=m["rounds"],
            submitted_at=m["submitted_at"],
            finished_at=m["finished_at"],
            report=None if m["report_json"] is None else json.loads(m["report_json"]),
        )


@dataclass(frozen=True)
class ChunkState:
    job_id: str
    index: int
    chunk: dict[str, Any]
    records: int
    status: str
    enqueued: int
    enqueued_at: float | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    worker: str | None
    conversations: int | None
    expected: int | None
    written: int | None
    errors: int
    error_samples: list[dict[str, Any]]
    keys: list[AnswerKey]
    seconds: float | None
    error: str | None

    @property
    def settled(self) -> bool:
        """Done, or failed for good: nothing more will happen to it by itself."""
        return self.status in ("done", "failed")

    @classmethod
    def from_row(cls, row: Any) -> ChunkState:
        m = row._mapping
        return cls(
            job_id=m["job_id"],
            index=m["chunk_index"],
            chunk=json.loads(m["chunk_json"]),
            records=m["records"],
            status=m["status"],
            enqueued=m["enqueued"],
            enqueued_at=m["enqueued_at"],
            attempts=m["attempts"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            worker=m["worker"],
            conversations=m["conversations"],
            expected=m["expected"],
            written=m["written"],
            errors=m["errors"],
            error_samples=json.loads(m["errors_json"]) if m["errors_json"] else [],
            keys=[(k[0], int(k[1]), k[2]) for k in json.loads(m["keys_json"])] if m["keys_json"] else [],
            seconds=m["seconds"],
            error=m["error"],
        )


@dataclass
class ResultRow:
    """One answer, as stored (see batch.schema.results)."""

    conversation_id: str
    task: str
    task_version: int
    checkpoint: str
    date: str
    channel: str
    job_id: str
    chunk_index: int
    label: str | None
    labels: list[str]
    scores: dict[str, float]
    expected_value: float | None = None
    text: str | None = None
    prompt_tokens: int = 0
    truncated: bool = False
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    scored_at: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.conversation_id, self.task, self.task_version, self.checkpoint)

    def to_values(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "task": self.task,
            "task_version": self.task_version,
            "checkpoint": self.checkpoint,
            "date": self.date,
            "channel": self.channel,
            "job_id": self.job_id,
            "chunk_index": self.chunk_index,
            "label": self.label,
            "labels_json": json.dumps(self.labels, ensure_ascii=False),
            "scores_json": json.dumps(self.scores, ensure_ascii=False),
            "expected_value": self.expected_value,
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "truncated": self.truncated,
            "queue_ms": self.queue_ms,
            "compute_ms": self.compute_ms,
            "scored_at": self.scored_at,
        }

    @classmethod
    def from_row(cls, row: Any) -> ResultRow:
        m = row._mapping
        return cls(
            conversation_id=m["conversation_id"],
            task=m["task"],
            task_version=m["task_version"],
            checkpoint=m["checkpoint"],
            date=m["date"],
            channel=m["channel"],
            job_id=m["job_id"],
            chunk_index=m["chunk_index"],
            label=m["label"],
            labels=json.loads(m["labels_json"]),
            scores=json.loads(m["scores_json"]),
            expected_value=m["expected_value"],
            text=m["text"],
            prompt_tokens=m["prompt_tokens"],
            truncated=bool(m["truncated"]),
            queue_ms=m["queue_ms"],
            compute_ms=m["compute_ms"],
            scored_at=m["scored_at"],
        )


def _insert(dialect: str) -> Callable[[Table], postgresql.Insert | sqlite.Insert]:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


class ResultStore:
    """Jobs, chunk status and results. Each call uses its own connection and
    transaction; safe to share between threads, not across fork (build one
    per process: see batch.worker)."""

    # SQLite allows 32766 bound parameters per statement; a result row has 18.
    _ROWS_PER_INSERT = 1000

    def __init__(self, url: str, *, run_migrations: bool = True):
        self.url = url
        self.engine = make_engine(url)
        if run_migrations:
            migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{db.WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- jobs ------------------------------------------------------------------------
    def create_job(self, job: Job, chunk_dicts: Sequence[dict[str, Any]]) -> None:
        now = time.time()
        with self._write() as conn:
            conn.execute(
                t.jobs.insert().values(
                    job_id=job.job_id,
                    date=job.date,
                    logs_dir=job.logs_dir,
                    status=job.status,
                    scorer=job.scorer,
                    tasks_json=None if job.tasks is None else json.dumps(list(job.tasks)),
                    chunk_size=job.chunk_size,
                    n_chunks=job.n_chunks,
                    records=job.records,
                    rejects=job.rejects,
                    rejects_json=json.dumps(job.rejects_by_reason, sort_keys=True),
                    rejects_file=job.rejects_file,
                    ground_truth=job.ground_truth,
                    rounds=job.rounds,
                    submitted_at=job.submitted_at,
                )
            )
            rows = [
                {
                    "job_id": job.job_id,
                    "chunk_index": int(c["index"]),
                    "chunk_json": json.dumps(c, ensure_ascii=False),
                    "records": sum(int(s["count"]) for s in c["spans"]),
                    "status": "pending",
                    "enqueued": 0,
                    "enqueued_at": now,
                    "attempts": 0,
                    "errors": 0,
                }
                for c in chunk_dicts
            ]
            for i in range(0, len(rows), 500):
                conn.execute(t.chunks.insert(), rows[i : i + 500])

    def job(self, job_id: str) -> Job:
        with self._read() as conn:
            row = conn.execute(select(t.jobs).where(t.jobs.c.job_id == job_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"no batch job {job_id!r} in {self._where()}")
        return Job.from_row(row)

    def jobs(self, date: str | None = None, *, limit: int = 50) -> list[Job]:
        q = select(t.jobs).order_by(t.jobs.c.submitted_at.desc()).limit(limit)
        if date is not None:
            q = q.where(t.jobs.c.date == date)
        with self._read() as conn:
            return [Job.from_row(r) for r in conn.execute(q)]

    def latest_job(self, date: str, *, finished: bool = False, before: bool = False) -> Job | None:
        """The newest job of `date` (or, with before=True, of the latest date before it)."""
        q = select(t.jobs)
        if finished:
            q = q.where(t.jobs.c.report_json.is_not(None))
        if before:
            q = q.where(t.jobs.c.date < date).order_by(t.jobs.c.date.desc(), t.jobs.c.submitted_at.desc())
        else:
            q = q.where(t.jobs.c.date == date).order_by(t.jobs.c.submitted_at.desc())
        with self._read() as conn:
            row = conn.execute(q.limit(1)).first()
        return None if row is None else Job.from_row(row)

    def set_job_status(self, job_id: str, status: str, *, finished_at: float | None = None) -> None:
        with self._write() as conn:
            conn.execute(update(t.jobs).where(t.jobs.c.job_id == job_id).values(status=status, finished_at=finished_at))

    def save_report(self, job_id: str, status: str, report: dict[str, Any], finished_at: float) -> None:
        with self._write() as conn:
            conn.execute(
                update(t.jobs)
                .where(t.jobs.c.job_id == job_id)
                .values(status=status, finished_at=finished_at, report_json=json.dumps(report, ensure_ascii=False))
            )

    # -- chunks ----------------------------------------------------------------------
    def chunks(self, job_id: str) -> list[ChunkState]:
        with self._read() as conn:
            rows = conn.execute(select(t.chunks).where(t.chunks.c.job_id == job_id).order_by(t.chunks.c.chunk_index))
            return [ChunkState.from_row(r) for r in rows]

    def chunk(self, job_id: str, index: int) -> ChunkState:
        with self._read() as conn:
            row = conn.execute(
                select(t.chunks).where(t.chunks.c.job_id == job_id, t.chunks.c.chunk_index == index)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"batch job {job_id!r} has no chunk {index}")
        return ChunkState.from_row(row)

    def mark_enqueued(self, job_id: str, indexes: Sequence[int], *, new_round: bool) -> None:
        now = time.time()
        with self._write() as conn:
            for i in range(0, len(indexes), 500):
                conn.execute(
                    update(t.chunks)
                    .where(t.chunks.c.job_id == job_id, t.chunks.c.chunk_index.in_(list(indexes[i : i + 500])))
                    .values(enqueued=t.chunks.c.enqueued + 1, enqueued_at=now)
                )
            if new_round:
                conn.execute(update(t.jobs).where(t.jobs.c.job_id == job_id).values(rounds=t.jobs.c.rounds + 1, status="running"))

    def start_chunk(self, job_id: str, index: int, worker: str) -> ChunkState:
        """Record a run starting; returns the state before it (a done chunk is left alone)."""
        with self._write() as conn:
            row = conn.execute(
                select(t.chunks).where(t.chunks.c.job_id == job_id, t.chunks.c.chunk_index == index)
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"batch job {job_id!r} has no chunk {index}")
            state = ChunkState.from_row(row)
            if state.status != "done":
                conn.execute(
                    update(t.chunks)
                    .where(t.chunks.c.job_id == job_id, t.chunks.c.chunk_index == index)
                    .values(status="running", attempts=t.chunks.c.attempts + 1, started_at=time.time(), worker=worker, error=None)
                )
            return state

    def finish_chunk(
        self,
        job_id: str,
        index: int,
        *,
        rows: Sequence[ResultRow],
        conversations: int,
        expected: int,
        keys: Iterable[AnswerKey],
        errors: Sequence[dict[str, Any]],
        seconds: float,
    ) -> int:
        """Upsert the last results and mark the chunk done in one transaction:
        a chunk is done exactly when its results are all in. Returns rows inserted."""
        with self._write() as conn:
            inserted = self._upsert(conn, rows)
            c = t.results.c
            written = conn.execute(
                select(func.count()).select_from(t.results).where(c.job_id == job_id, c.chunk_index == index)
            ).scalar_one()
            conn.execute(
                update(t.chunks)
                .where(t.chunks.c.job_id == job_id, t.chunks.c.chunk_index == index)
                .values(
                    status="done",
                    finished_at=time.time(),
                    conversations=conversations,
                    expected=expected,
                    written=int(written),
                    errors=len(errors),
                    errors_json=json.dumps(list(errors)[:20], ensure_ascii=False) if errors else None,
                    keys_json=json.dumps(sorted({(k[0], int(k[1]), k[2]) for k in keys})),
                    seconds=seconds,
                    error=None,
                )
            )
        return inserted

    def fail_chunk(self, job_id: str, index: int, error: str, *, final: bool) -> None:
        """A run ended without finishing: `final` marks the chunk failed for good
        (reported), otherwise it goes back to pending (a retry follows)."""
        with self._write() as conn:
            conn.execute(
                update(t.chunks)
                .where(t.chunks.c.job_id == job_id, t.chunks.c.chunk_index == index, t.chunks.c.status != "done")
                .values(status="failed" if final else "pending", error=error[:2000])
            )

    def reopen_chunks(self, job_id: str, indexes: Sequence[int]) -> None:
        """Failed chunks back to pending (an operator's `reconcile --retry-failed`)."""
        with self._write() as conn:
            conn.execute(
                update(t.chunks)
                .where(t.chunks.c.job_id == job_id, t.chunks.c.chunk_index.in_(list(indexes)), t.chunks.c.status == "failed")
                .values(status="pending", error=None)
            )

    # -- results ---------------------------------------------------------------------
    def _upsert(self, conn: Connection, rows: Sequence[ResultRow]) -> int:
        if not rows:
            return 0
        insert = _insert(self.dialect)
        inserted = 0
        for i in range(0, len(rows), self._ROWS_PER_INSERT):
            values = [r.to_values() for r in rows[i : i + self._ROWS_PER_INSERT]]
            stmt = insert(t.results).values(values).on_conflict_do_nothing(index_elements=list(t.RESULT_KEY))
            # RETURNING lists the rows actually inserted (rowcount is -1 on psycopg here).
            inserted += len(conn.execute(stmt.returning(t.results.c.id)).all())
        return inserted

    def upsert_results(self, rows: Sequence[ResultRow]) -> int:
        """Insert the rows whose key is new; returns how many were inserted."""
        with self._write() as conn:
            return self._upsert(conn, rows)

    def existing_keys(self, conversation_ids: Sequence[str]) -> set[tuple[str, str, int, str]]:
        """The result keys already stored for these conversations."""
        out: set[tuple[str, str, int, str]] = set()
        if not conversation_ids:
            return out
        c = t.results.c
        with self._read() as conn:
            for i in range(0, len(conversation_ids), 500):
                q = select(c.conversation_id, c.task, c.task_version, c.checkpoint).where(
                    c.conversation_id.in_(list(conversation_ids[i : i + 500]))
                )
                out.update((r[0], r[1], int(r[2]), r[3]) for r in conn.execute(q))
        return out

    def results(self, date: str, keys: Iterable[AnswerKey] | None = None, *, task: str | None = None) -> Iterator[ResultRow]:
        """Results of a day, optionally only those answered by the given
        (task, task_version, checkpoint) keys; ordered by task then conversation."""
        c = t.results.c
        q = select(t.results).where(c.date == date)
        if task is not None:
            q = q.where(c.task == task)
        if keys is not None:
            wanted = sorted(set(keys))
            if not wanted:
                return iter(())
            q = q.where(tuple_(c.task, c.task_version, c.checkpoint).in_(wanted))
        q = q.order_by(c.task, c.conversation_id, c.task_version, c.checkpoint)
        return self._stream(q)

    def _stream(self, q: Any) -> Iterator[ResultRow]:
        with self._read() as conn:
            for row in conn.execution_options(yield_per=2000).execute(q):
                yield ResultRow.from_row(row)

    def count_results(self, *, date: str | None = None, job_id: str | None = None) -> int:
        c = t.results.c
        q = select(func.count()).select_from(t.results)
        if date is not None:
            q = q.where(c.date == date)
        if job_id is not None:
            q = q.where(c.job_id == job_id)
        with self._read() as conn:
            return int(conn.execute(q).scalar_one())

    def duplicate_keys(self, date: str) -> int:
        """(conversation, task) pairs of a day answered more than once by the
        same checkpoint and task version: always 0 (the unique key); tests and
        `batch verify` check it."""
        c = t.results.c
        sub = (
            select(c.conversation_id, c.task, c.task_version, c.checkpoint, func.count().label("n"))
            .where(c.date == date)
            .group_by(c.conversation_id, c.task, c.task_version, c.checkpoint)
            .subquery()
        )
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(sub).where(sub.c.n > 1)).scalar_one())

    def _where(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)
