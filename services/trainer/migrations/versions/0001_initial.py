"""The trainer's job records: jobs, their attempts and their event logs.

Revision ID: 0001
Revises:
Create Date: 2027-01-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trainer_jobs",
        sa.Column("id", sa.String(96), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("queued_at", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False, server_default=""),
        sa.Column("finished_at", sa.String(32), nullable=False, server_default=""),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("options_json", sa.Text, nullable=False),
        sa.Column("spec_yaml", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("result_json", sa.Text, nullable=True),
        sa.Column("next_action", sa.String(16), nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_role", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False, server_default=""),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
        sa.Column("folder", sa.Text, nullable=False, server_default=""),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("progress_json", sa.Text, nullable=False),
    )
    op.create_index("ix_trainer_jobs_name", "trainer_jobs", ["name"])
    op.create_table(
        "trainer_attempts",
        sa.Column("job_id", sa.String(96), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("ended_at", sa.String(32), nullable=False, server_default=""),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("job_id", "number"),
        sa.ForeignKeyConstraint(["job_id"], ["trainer_jobs.id"], ondelete="CASCADE"),
    )
    op.create_table(
        "trainer_events",
        sa.Column("job_id", sa.String(96), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event_json", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("job_id", "seq"),
        sa.ForeignKeyConstraint(["job_id"], ["trainer_jobs.id"], ondelete="CASCADE"),
    )


def downgrade() -> None:
    op.drop_table("trainer_events")
    op.drop_table("trainer_attempts")
    op.drop_index("ix_trainer_jobs_name", table_name="trainer_jobs")
    op.drop_table("trainer_jobs")
