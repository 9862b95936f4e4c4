"""SQL databases, the way every store of the project opens them (the
registry, the batch results): SQLite files in WAL mode or PostgreSQL by URL,
schemas from Alembic migrations.

A transaction that will write runs with the execution option `WRITE`:
on SQLite it takes the write lock at BEGIN (`BEGIN IMMEDIATE`), because a
deferred transaction that reads and then writes fails with "database is
locked" (without waiting) when another writer committed in between, where an
immediate one waits its turn (busy timeout). PostgreSQL needs no such help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mtserve.errors import ValidationError

WRITE = "mtserve_write"  # execution option: this transaction will write


def make_engine(url: str, *, setting: str, busy_timeout: float = 60) -> Engine:
    """An engine for a sqlite:/// file or a postgresql+psycopg:// URL;
    `setting` names the configuration key in errors."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            raise ValidationError(setting, "an in-memory SQLite database cannot be shared between connections and processes; give a file", url)
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"timeout": busy_timeout, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # pysqlite's implicit BEGIN is deferred and cannot be made
            # IMMEDIATE: take over transaction control (see _on_begin).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a power cut may lose the last commit only
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN DEFERRED")

        return engine
    if backend != "postgresql":
        raise ValidationError(setting, "must be a sqlite:/// or postgresql+psycopg:// URL", url)
    return create_engine(u, pool_pre_ping=True)


def migrate(engine: Engine, migrations: Path, *, lock_id: int) -> None:
    """Bring the schema to the newest migration: idempotent, and on PostgreSQL
    concurrent callers (replicas, workers) wait for each other on an advisory lock."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    with engine.connect() as conn:
        conn = conn.execution_options(**{WRITE: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({lock_id})")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


def schema_revision(engine: Engine, version_table: str = "alembic_version") -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": version_table}).get_current_revision()


def run_alembic_env(metadata: MetaData, version_table: str = "alembic_version") -> None:
    """The body of a migrations folder's env.py. The stores migrate at start
    and hand over their connection in `config.attributes["connection"]`;
    without one (the alembic command line, e.g. to write a new revision) the
    URL comes from `-x url=...` or the config's sqlalchemy.url."""
    from alembic import context

    config = context.config

    def run(connection: Any) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            # SQLite cannot ALTER most things in place; batch mode recreates tables.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata, literal_binds=True,
                          version_table=version_table)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url is None:  # neither given: the same error create_engine(None) raises
        raise ArgumentError("Expected string or URL object, got None")
    with create_engine(url).begin() as conn:
        run(conn)
