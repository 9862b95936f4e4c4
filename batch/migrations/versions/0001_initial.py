"""The initial batch results schema: jobs, their chunks, and results keyed by
(conversation_id, task, task_version, checkpoint).

Revision ID: b0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "b0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batch_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("date", sa.String(10), nullable=False),
        sa.Column("logs_dir", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scorer", sa.String(16), nullable=False),
        sa.Column("tasks_json", sa.Text, nullable=True),
        sa.Column("chunk_size", sa.Integer, nullable=False),
        sa.Column("n_chunks", sa.Integer, nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("rejects", sa.Integer, nullable=False),
        sa.Column("rejects_json", sa.Text, nullable=False),
        sa.Column("rejects_file", sa.Text, nullable=False),
        sa.Column("ground_truth", sa.Text, nullable=True),
        sa.Column("rounds", sa.Integer, nullable=False),
        sa.Column("submitted_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("report_json", sa.Text, nullable=True),
    )
    op.create_index("ix_batch_jobs_date", "batch_jobs", ["date"])
    op.create_table(
        "batch_chunks",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("chunk_index", sa.Integer, nullable=False),
        sa.Column("chunk_json", sa.Text, nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("enqueued", sa.Integer, nullable=False),
        sa.Column("enqueued_at", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("conversations", sa.Integer, nullable=True),
        sa.Column("expected", sa.Integer, nullable=True),
        sa.Column("written", sa.Integer, nullable=True),
        sa.Column("errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("errors_json", sa.Text, nullable=True),
        sa.Column("keys_json", sa.Text, nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("job_id", "chunk_index"),
        sa.ForeignKeyConstraint(["job_id"], ["batch_jobs.job_id"], ondelete="CASCADE"),
    )
    op.create_table(
        "batch_results",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", sa.String(255), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("task_version", sa.Integer, nullable=False),
        sa.Column("checkpoint", sa.String(128), nullable=False),
        sa.Column("date", sa.String(10), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("chunk_index", sa.Integer, nullable=False),
        sa.Column("label", sa.String(255), nullable=True),
        sa.Column("labels_json", sa.Text, nullable=False),
        sa.Column("scores_json", sa.Text, nullable=False),
        sa.Column("expected_value", sa.Float, nullable=True),
        sa.Column("text", sa.Text, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("queue_ms", sa.Float, nullable=False),
        sa.Column("compute_ms", sa.Float, nullable=False),
        sa.Column("scored_at", sa.Float, nullable=False),
        sa.UniqueConstraint("conversation_id", "task", "task_version", "checkpoint", name="uq_batch_results_key"),
    )
    op.create_index("ix_batch_results_date_task", "batch_results", ["date", "task"])
    op.create_index("ix_batch_results_job", "batch_results", ["job_id", "chunk_index"])


def downgrade() -> None:
    for table in ("batch_results", "batch_chunks", "batch_jobs"):
        op.drop_table(table)
