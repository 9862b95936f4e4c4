"""The results store's tables (SQLAlchemy Core). The schema is created and
changed only by the Alembic migrations in batch/migrations/versions/ (with
their own version table, `batch_alembic_version`, so the results can share a
database with the registry); this module mirrors the head revision for the
store's queries, and a test checks that the two agree.

Times are epoch seconds (UTC) as floats: the store computes rates and ETAs
with them; reports render them as ISO-8601.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

VERSION_TABLE = "batch_alembic_version"
metadata = MetaData()

# An autoincrementing 64-bit id on PostgreSQL; SQLite only autoincrements INTEGER.
_ID = BigInteger().with_variant(Integer(), "sqlite")

# One row per `mtserve batch submit`.
jobs = Table(
    "batch_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("date", String(10), nullable=False, index=True),
    Column("logs_dir", Text, nullable=False),
    # running -> finished (every chunk done) | incomplete (some chunk failed or gave up)
    Column("status", String(16), nullable=False),
    Column("scorer", String(16), nullable=False),
    Column("tasks_json", Text, nullable=True),  # the --tasks asked for; NULL: every applicable classification task
    Column("chunk_size", Integer, nullable=False),
    Column("n_chunks", Integer, nullable=False),
    Column("records", Integer, nullable=False),  # log records planned (valid + rejected)
    Column("rejects", Integer, nullable=False),
    Column("rejects_json", Text, nullable=False),  # {reason code: count}
    Column("rejects_file", Text, nullable=False),
    Column("ground_truth", Text, nullable=True),  # a SYNTHETIC labels.jsonl found beside the logs
    Column("rounds", Integer, nullable=False),  # chords sent: 1 + re-enqueue rounds
    Column("submitted_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("report_json", Text, nullable=True),
)

# One row per chunk of a job: the completeness record. A chunk is `done` only
# in the transaction that commits its last results, so "every chunk done"
# means every result is in the store, whatever the broker or the chord counted.
chunks = Table(
    "batch_chunks",
    metadata,
    Column("job_id", String(64), nullable=False),
    Column("chunk_index", Integer, nullable=False),
    Column("chunk_json", Text, nullable=False),  # batch.logs.Chunk.to_dict(): what to re-enqueue
    Column("records", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # pending | running | done | failed
    Column("enqueued", Integer, nullable=False),  # messages sent for it
    Column("enqueued_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False),  # runs started (redeliveries and retries included)
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("worker", String(255), nullable=True),
    Column("conversations", Integer, nullable=True),  # valid conversations in the chunk
    Column("expected", Integer, nullable=True),  # result rows the chunk must have
    Column("written", Integer, nullable=True),  # rows this job inserted for it (fewer than expected when an earlier job had them)
    Column("errors", Integer, nullable=False, server_default="0"),
    Column("errors_json", Text, nullable=True),  # first few per-task errors, for the report
    Column("keys_json", Text, nullable=True),  # [[task, task_version, checkpoint], ...] that answered
    Column("seconds", Float, nullable=True),  # wall time of the run that completed it
    Column("error", Text, nullable=True),  # why it failed (status failed)
    PrimaryKeyConstraint("job_id", "chunk_index"),
    ForeignKeyConstraint(["job_id"], ["batch_jobs.job_id"], ondelete="CASCADE"),
)

# One row per (conversation, task, task version, checkpoint): the upsert key.
# A redelivered chunk, a second submission of the same day or a reconcile
# round inserts nothing new (ON CONFLICT DO NOTHING: the same checkpoint and
# task version give the same answer, so the first row stands).
results = Table(
    "batch_results",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("conversation_id", String(255), nullable=False),
    Column("task", String(64), nullable=False),
    Column("task_version", Integer, nullable=False),  # 0: a catalogue task without a registry version
    Column("checkpoint", String(128), nullable=False),
    Column("date", String(10), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("job_id", String(64), nullable=False),  # the job that wrote the row first
    Column("chunk_index", Integer, nullable=False),
    Column("label", String(255), nullable=True),  # most probable label; NULL for generation
    Column("labels_json", Text, nullable=False),  # the label set: [label] or, multi-label, those over the threshold
    Column("scores_json", Text, nullable=False),  # {label: probability} in the task's label order
    Column("expected_value", Float, nullable=True),  # ordinal tasks
    Column("text", Text, nullable=True),  # generation tasks
    Column("prompt_tokens", Integer, nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("queue_ms", Float, nullable=False),  # grpc: time queued in the inference service
    Column("compute_ms", Float, nullable=False),  # the scorer call's time (shared by its results)
    Column("scored_at", Float, nullable=False),
    UniqueConstraint("conversation_id", "task", "task_version", "checkpoint", name="uq_batch_results_key"),
    Index("ix_batch_results_date_task", "date", "task"),
    Index("ix_batch_results_job", "job_id", "chunk_index"),
)

RESULT_KEY = ("conversation_id", "task", "task_version", "checkpoint")
