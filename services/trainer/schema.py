"""The trainer's tables (SQLAlchemy Core): job records, their attempts and
their progress events. Created and changed only by the Alembic migrations in
services/trainer/migrations/versions/ (version table
`trainer_alembic_version`, so the jobs can share a database with the
registry and the batch results); this module mirrors the head revision, and
a test checks that the two agree.

Times the service shows are ISO-8601 strings (as the proto has them); the
heartbeat is epoch seconds, compared with the clock of the database's
clients (the workers and the service: keep their clocks in sync).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, ForeignKeyConstraint, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text

VERSION_TABLE = "trainer_alembic_version"
metadata = MetaData()

# One row per StartJob.
jobs = Table(
    "trainer_jobs",
    metadata,
    Column("id", String(96), primary_key=True),
    Column("name", String(64), nullable=False, index=True),
    Column("state", String(16), nullable=False),  # records.JobState
    Column("created_at", String(32), nullable=False),
    Column("queued_at", String(32), nullable=False),
    Column("started_at", String(32), nullable=False, server_default=""),
    Column("finished_at", String(32), nullable=False, server_default=""),
    Column("updated_at", String(32), nullable=False),
    Column("options_json", Text, nullable=False),  # records.Options
    Column("spec_yaml", Text, nullable=False),  # as submitted
    Column("error", Text, nullable=False, server_default=""),
    Column("result_json", Text, nullable=True),  # the job process's `result` event, once it succeeded
    # What the next attempt does (start | resume): a later attempt always
    # continues from the last saved state of the earlier ones.
    Column("next_action", String(16), nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    # Who asked for the latest start or resume, and with which role: the
    # train task checks the role again before it runs anything.
    Column("requested_by", String(128), nullable=False),
    Column("requested_role", String(16), nullable=False),
    # The worker running the job now ("" when none) and its last heartbeat:
    # the lease that keeps a redelivered message from training the job twice.
    Column("owner", String(255), nullable=False, server_default=""),
    Column("heartbeat_at", Float, nullable=True),
    Column("folder", Text, nullable=False, server_default=""),  # the latest attempt's work folder, on its worker
    Column("events", Integer, nullable=False),  # events logged: the next event's seq
    Column("progress_json", Text, nullable=False),  # records.Progress of the latest attempt
)

# One row per process the job ran in.
attempts = Table(
    "trainer_attempts",
    metadata,
    Column("job_id", String(96), nullable=False),
    Column("number", Integer, nullable=False),  # 1, 2, ...
    Column("action", String(16), nullable=False),  # start | resume
    Column("worker", String(255), nullable=False),
    Column("pid", Integer, nullable=False),  # 0 until the process started
    Column("started_at", String(32), nullable=False),
    Column("ended_at", String(32), nullable=False, server_default=""),
    Column("exit_code", Integer, nullable=True),
    Column("outcome", String(16), nullable=False, server_default=""),
    PrimaryKeyConstraint("job_id", "number"),
    ForeignKeyConstraint(["job_id"], ["trainer_jobs.id"], ondelete="CASCADE"),
)

# The job's log: the job process's JSON-line events and the service's and
# workers' own (job_queued, attempt_started, attempt_lost, job_state), in order.
events = Table(
    "trainer_events",
    metadata,
    Column("job_id", String(96), nullable=False),
    Column("seq", Integer, nullable=False),  # from 0; WatchJob's from_seq
    Column("event_json", Text, nullable=True),  # NULL: a line of the job's stdout that was not a JSON object
    PrimaryKeyConstraint("job_id", "seq"),
    ForeignKeyConstraint(["job_id"], ["trainer_jobs.id"], ondelete="CASCADE"),
)
