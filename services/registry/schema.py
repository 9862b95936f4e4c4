"""The registry's tables (SQLAlchemy Core). The schema itself is created and
changed only by the Alembic migrations in migrations/versions/; this module
mirrors the head revision for the store's queries, and a test checks that the
two agree.

Timestamps are ISO-8601 UTC strings: SQLite has no time zone type, and the
values are only shown, never computed with.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

# One row (id = 1). Every write transaction bumps `revision` first: on
# PostgreSQL the row lock serializes writers (so version numbers and route
# history never race), and watchers compare revisions to see a change.
registry_state = Table(
    "registry_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("truncation_json", Text, nullable=True),  # NULL: the built-in defaults
    Column("truncation_source", String(64), nullable=False, server_default=""),
    Column("updated_at", String(32), nullable=False, server_default=""),
)

tasks = Table(
    "tasks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("latest_version", Integer, nullable=False),
    Column("updated_at", String(32), nullable=False),
)

task_versions = Table(
    "task_versions",
    metadata,
    Column("name", String(64), ForeignKey("tasks.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("definition_json", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
    PrimaryKeyConstraint("name", "version"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("path", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("manifest_json", Text, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("registered_at", String(32), nullable=False),
)

# Every route ever set, in order. Rolling back marks the current entry
# `rolled_back_at` and restores the newest entry not rolled back before it.
route_history = Table(
    "route_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_name", String(64), nullable=False, index=True),
    Column("task_version", Integer, nullable=False),
    Column("checkpoint_id", String(128), ForeignKey("checkpoints.id"), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("rolled_back_at", String(32), nullable=True),
    Column("revision", BigInteger, nullable=False),
    Column("actor", String(64), nullable=False, server_default=""),
    ForeignKeyConstraint(["task_name", "task_version"], ["task_versions.name", "task_versions.version"]),
)

# The route in force per task: what readers (GetRoutes, Watch) read, in one
# statement, so a promotion of many tasks is seen whole or not at all.
routes = Table(
    "routes",
    metadata,
    Column("task_name", String(64), ForeignKey("tasks.name"), primary_key=True),
    Column("task_version", Integer, nullable=False),
    Column("checkpoint_id", String(128), ForeignKey("checkpoints.id"), nullable=False),
    Column("history_id", Integer, ForeignKey("route_history.id"), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    ForeignKeyConstraint(["task_name", "task_version"], ["task_versions.name", "task_versions.version"]),
)

# Every committed write, with who made it (the token name; "" with auth off
# or for in-process callers), when, and why (migration 0002).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("revision", BigInteger, nullable=False),
    Column("at", String(32), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", Text, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
)
