"""The initial registry schema: tasks and their versions, checkpoints, routes
and route history, and the one-row registry state (revision, truncation policy).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    state = op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("truncation_json", sa.Text, nullable=True),
        sa.Column("truncation_source", sa.String(64), nullable=False, server_default=""),
        sa.Column("updated_at", sa.String(32), nullable=False, server_default=""),
    )
    op.bulk_insert(state, [{"id": 1, "revision": 0, "truncation_json": None, "truncation_source": "", "updated_at": ""}])
    op.create_table(
        "tasks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "task_versions",
        sa.Column("name", sa.String(64), sa.ForeignKey("tasks.name"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("definition_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("name", "version"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("manifest_json", sa.Text, nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("registered_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "route_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_name", sa.String(64), nullable=False),
        sa.Column("task_version", sa.Integer, nullable=False),
        sa.Column("checkpoint_id", sa.String(128), sa.ForeignKey("checkpoints.id"), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("rolled_back_at", sa.String(32), nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(["task_name", "task_version"], ["task_versions.name", "task_versions.version"]),
    )
    op.create_index("ix_route_history_task_name", "route_history", ["task_name"])
    op.create_table(
        "routes",
        sa.Column("task_name", sa.String(64), sa.ForeignKey("tasks.name"), primary_key=True),
        sa.Column("task_version", sa.Integer, nullable=False),
        sa.Column("checkpoint_id", sa.String(128), sa.ForeignKey("checkpoints.id"), nullable=False),
        sa.Column("history_id", sa.Integer, sa.ForeignKey("route_history.id"), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.ForeignKeyConstraint(["task_name", "task_version"], ["task_versions.name", "task_versions.version"]),
    )


def downgrade() -> None:
    for table in ("routes", "route_history", "checkpoints", "task_versions", "tasks", "registry_state"):
        op.drop_table(table)
