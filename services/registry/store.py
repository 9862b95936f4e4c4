"""The registry's storage: plain Python over SQLAlchemy, no gRPC.

SQLite (a file, WAL mode) by default, PostgreSQL by URL
(`postgresql+psycopg://user@host/db`). The schema comes from the Alembic
migrations, applied at start (`upgrade head`).

Transactions. Every write runs in one transaction that first bumps the
registry revision: on PostgreSQL the row lock on `registry_state` serializes
writers, on SQLite `BEGIN IMMEDIATE` does. A write that changes nothing rolls
back, so the revision moves only on real changes. Reads run in one snapshot
(REPEATABLE READ on PostgreSQL, a deferred transaction in WAL mode on SQLite),
so a route table is never read half-way through a promotion.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Row, select, update

from mtserve import db
from mtserve.checkpoints import MANIFEST, check_checkpoint_id, manifest_sha256, verify_checkpoint
from mtserve.errors import IntegrityError, NotFoundError, PreconditionError, ValidationError
from mtserve.paths import caller_path, confined_path
from mtserve.records import (
    AuditEntry,
    CheckpointRecord,
    PolicyRecord,
    Registered,
    RegistryState,
    Route,
    RouteChange,
    RouteHistoryEntry,
    RouteUpdate,
    TaskRecord,
    TaskStatus,
)
from mtserve.tasks import Channel, Task, Taxonomy, TruncationPolicy, check_name, parse_task
from services.registry import schema as t

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x6D74_7376  # "mtsv": one replica migrates at a time


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def make_engine(url: str) -> Engine:
    return db.make_engine(url, setting="registry.database_url", busy_timeout=30)


def migrate(engine: Engine) -> None:
    db.migrate(engine, MIGRATIONS, lock_id=_PG_MIGRATION_LOCK)


def schema_revision(engine: Engine) -> str | None:
    return db.schema_revision(engine)


@dataclass
class _Tx:
    conn: Connection
    revision: int  # the revision this transaction commits as
    now: str
    actor: str = ""
    reason: str = ""  # the caller's, for every change of the transaction
    changed: bool = False
    audit: list[tuple[str, str, str]] = field(default_factory=list)  # (action, target, reason)

    def record(self, action: str, target: str, detail: str = "") -> None:
        """Note a change for the audit log, written with the commit; its
        reason is the caller's, after what the store adds (`detail`)."""
        self.changed = True
        self.audit.append((action, target, "; ".join(r for r in (detail, self.reason) if r)))


class RegistryStore:
    """Tasks, checkpoints and routes in a SQL database. Thread-safe: each call
    uses its own connection and transaction."""

    def __init__(self, url: str, *, run_migrations: bool = True, checkpoint_roots: Sequence[Path] | None = None):
        """`checkpoint_roots`: the folders registered checkpoints must lie in
        (the server passes the settings'); None accepts any folder (a store
        used in-process by its owner)."""
        self.url = url
        self.checkpoint_roots = None if checkpoint_roots is None else [Path(r).expanduser().resolve() for r in checkpoint_roots]
        self.engine = make_engine(url)
        if run_migrations:
            migrate(self.engine)
        # Local writers notify watchers at once; writes by other registry
        # replicas sharing the database are seen by polling the revision.
        self.changed = threading.Condition()

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions --------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextmanager
    def _write(self, actor: str = "", reason: str = "") -> Iterator[_Tx]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{db.WRITE: True})
            tx = conn.begin()
            try:
                conn.execute(update(t.registry_state).where(t.registry_state.c.id == 1).values(revision=t.registry_state.c.revision + 1))
                revision = conn.execute(select(t.registry_state.c.revision).where(t.registry_state.c.id == 1)).scalar_one()
                state = _Tx(conn, int(revision), utcnow(), actor, reason)
                yield state
            except BaseException:
                tx.rollback()
                raise
            if state.changed:
                conn.execute(update(t.registry_state).where(t.registry_state.c.id == 1).values(updated_at=state.now))
                for action, target, why in state.audit:
                    conn.execute(t.audit_log.insert().values(
                        revision=state.revision, at=state.now, actor=actor, action=action, target=target, reason=why))
                tx.commit()
                with self.changed:
                    self.changed.notify_all()
            else:
                tx.rollback()  # nothing changed: the revision stays where it was

    def revision(self) -> int:
        with self._read() as conn:
            return self._revision(conn)

    @staticmethod
    def _revision(conn: Connection) -> int:
        return int(conn.execute(select(t.registry_state.c.revision).where(t.registry_state.c.id == 1)).scalar_one())

    # -- tasks ------------------------------------------------------------------------
    # Every write takes `actor`, the caller's token name, for the audit log.
    def register_task(self, task: Task, *, actor: str = "", reason: str = "") -> Registered:
        with self._write(actor, reason) as tx:
            return self._register(tx, task)

    def apply_catalogue(
        self, tasks: Sequence[Task], policy: PolicyRecord, *, actor: str = "", reason: str = ""
    ) -> tuple[list[Registered], int]:
        """Register every task and set the truncation policy, in one transaction."""
        seen: dict[str, int] = {}
        for i, task in enumerate(tasks):
            if task.name in seen:
                raise ValidationError(f"tasks[{i}].name", f"duplicate task name (also tasks[{seen[task.name]}])", task.name)
            seen[task.name] = i
        with self._write(actor, reason) as tx:
            results = [self._register(tx, task) for task in tasks]
            current = self._policy(tx.conn)
            if current != policy:
                tx.conn.execute(
                    update(t.registry_state)
                    .where(t.registry_state.c.id == 1)
                    .values(truncation_json=json.dumps(policy.policy.to_list()), truncation_source=policy.source)
                )
                tx.record("set_policy", policy.source or "truncation policy")
            revision = tx.revision if tx.changed else tx.revision - 1
        return results, revision

    def _register(self, tx: _Tx, task: Task) -> Registered:
        conn = tx.conn
        body = task.with_version(None)
        digest = body.content_hash()
        row = conn.execute(select(t.tasks).where(t.tasks.c.name == task.name)).one_or_none()
        if row is None:
            version, changed = 1, True
            conn.execute(t.tasks.insert().values(name=task.name, status=TaskStatus.ACTIVE.value, latest_version=1, updated_at=tx.now))
        else:
            latest = conn.execute(
                select(t.task_versions.c.content_hash).where(t.task_versions.c.name == task.name, t.task_versions.c.version == row.latest_version)
            ).scalar_one()
            retired = row.status == TaskStatus.RETIRED.value
            if latest == digest:
                version, changed = row.latest_version, retired
                if retired:  # registering a retired task serves it again
                    conn.execute(update(t.tasks).where(t.tasks.c.name == task.name).values(status=TaskStatus.ACTIVE.value, updated_at=tx.now))
                    tx.record("register_task", f"{task.name} v{version}", "registered again: active")
                return Registered(self._record(conn, task.name, version), changed)
            version, changed = row.latest_version + 1, True
            conn.execute(
                update(t.tasks).where(t.tasks.c.name == task.name).values(status=TaskStatus.ACTIVE.value, latest_version=version, updated_at=tx.now)
            )
        conn.execute(
            t.task_versions.insert().values(
                name=task.name, version=version, content_hash=digest, definition_json=json.dumps(body.to_dict(), ensure_ascii=False), created_at=tx.now
            )
        )
        tx.record("register_task", f"{task.name} v{version}")
        return Registered(self._record(conn, task.name, version), changed)

    def _record(self, conn: Connection, name: str, version: int | None = None) -> TaskRecord:
        head = conn.execute(select(t.tasks).where(t.tasks.c.name == name)).one_or_none()
        if head is None:
            raise NotFoundError(f"unknown task {name!r}")
        v = head.latest_version if version is None else version
        row = conn.execute(select(t.task_versions).where(t.task_versions.c.name == name, t.task_versions.c.version == v)).one_or_none()
        if row is None:
            raise NotFoundError(f"task {name!r} has no version {v}; its versions are 1 to {head.latest_version}")
        return self._to_record(row, head)

    @staticmethod
    def _to_record(row: Row[Any], head: Row[Any]) -> TaskRecord:
        task = parse_task(json.loads(row.definition_json), f"stored task {row.name}@{row.version}").with_version(row.version)
        return TaskRecord(task=task, status=TaskStatus(head.status), latest_version=head.latest_version, created_at=row.created_at)

    def get_task(self, name: str, version: int | None = None) -> TaskRecord:
        check_name(name, "name")
        if version is not None and version < 1:
            raise ValidationError("version", "must be a positive integer", version)
        with self._read() as conn:
            return self._record(conn, name, version)

    def list_tasks(
        self, *, channel: Channel | None = None, taxonomy: Taxonomy | None = None, status: TaskStatus | None = None
    ) -> list[TaskRecord]:
        """The latest version of every task matching all the filters given, by name."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.task_versions, t.tasks.c.status, t.tasks.c.latest_version)
                .join(t.tasks, (t.tasks.c.name == t.task_versions.c.name) & (t.tasks.c.latest_version == t.task_versions.c.version))
                .order_by(t.task_versions.c.name)
            ).all()
        out = []
        for row in rows:
            record = self._to_record(row, row)
            if status is not None and record.status is not status:
                continue
            if taxonomy is not None and record.task.taxonomy is not taxonomy:
                continue
            if channel is not None and channel not in record.task.channels:
                continue
            out.append(record)
        return out

    def retire_task(self, name: str, *, actor: str = "", reason: str = "") -> TaskRecord:
        check_name(name, "name")
        with self._write(actor, reason) as tx:
            record = self._record(tx.conn, name)
            if record.status is not TaskStatus.RETIRED:
                tx.conn.execute(update(t.tasks).where(t.tasks.c.name == name).values(status=TaskStatus.RETIRED.value, updated_at=tx.now))
                tx.record("retire_task", name)
                record = self._record(tx.conn, name)
            return record

    def policy(self) -> PolicyRecord:
        with self._read() as conn:
            return self._policy(conn)

    @staticmethod
    def _policy(conn: Connection) -> PolicyRecord:
        row = conn.execute(select(t.registry_state).where(t.registry_state.c.id == 1)).one()
        if row.truncation_json is None:
            return PolicyRecord(TruncationPolicy(), "")
        return PolicyRecord(TruncationPolicy.from_list(json.loads(row.truncation_json), "stored truncation"), row.truncation_source)

    # -- checkpoints --------------------------------------------------------------------
    def register_checkpoint(self, path: str | Path, *, actor: str = "", reason: str = "") -> tuple[CheckpointRecord, bool]:
        """Verify the folder's manifest and every file hash, then record it.
        The same manifest again is a no-op (the path is updated if the folder
        moved); another manifest under a registered id is refused: checkpoints
        are immutable."""
        value = str(path)
        where = "a checkpoint root of the registry (settings checkpoints_dir and registry.checkpoint_roots)"
        # Path errors quote the caller's string only: never the resolved
        # folder, the registry's home or working folder, nor the roots.
        folder = (caller_path(value, "path").resolve() if self.checkpoint_roots is None
                  else confined_path(value, "path", self.checkpoint_roots, where))
        if not folder.is_dir():
            raise ValidationError("path", "is not a folder the registry can read", value)
        if not (folder / MANIFEST).is_file():
            raise ValidationError("path", "has no manifest.json: not an mtserve checkpoint (run `mtserve models import` on a plain model folder)", value)
        try:
            manifest = verify_checkpoint(folder)  # hashes every file: done before the transaction
        except (IntegrityError, ValidationError) as exc:
            exc.args = (str(exc).replace(str(folder), value),)  # a malformed manifest's message names the folder
            raise
        manifest_json = (folder / MANIFEST).read_text(encoding="utf-8")
        digest = manifest_sha256(folder)
        with self._write(actor, reason) as tx:
            row = tx.conn.execute(select(t.checkpoints).where(t.checkpoints.c.id == manifest.id)).one_or_none()
            if row is not None:
                if row.manifest_sha256 != digest:
                    raise PreconditionError(
                        f"checkpoint {manifest.id!r} is already registered with another manifest "
                        f"(sha256 {row.manifest_sha256[:12]}..., this one {digest[:12]}...); checkpoints are immutable, give it a new id"
                    )
                if row.path != str(folder):
                    tx.conn.execute(update(t.checkpoints).where(t.checkpoints.c.id == manifest.id).values(path=str(folder)))
                    tx.record("register_checkpoint", manifest.id, f"moved to {folder}")
                    return self._checkpoint(tx.conn, manifest.id), True
                return self._checkpoint(tx.conn, manifest.id), False
            tx.conn.execute(
                t.checkpoints.insert().values(
                    id=manifest.id, path=str(folder), kind=manifest.kind, manifest_json=manifest_json, manifest_sha256=digest, registered_at=tx.now
                )
            )
            tx.record("register_checkpoint", manifest.id, str(folder))
            return self._checkpoint(tx.conn, manifest.id), True

    @staticmethod
    def _checkpoint(conn: Connection, checkpoint_id: str, where: str = "checkpoint_id") -> CheckpointRecord:
        row = conn.execute(select(t.checkpoints).where(t.checkpoints.c.id == checkpoint_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"{where}: checkpoint {checkpoint_id!r} is not registered (register it with `mtserve checkpoints register PATH`)")
        return CheckpointRecord(row.id, row.path, row.kind, row.manifest_json, row.manifest_sha256, row.registered_at)

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRecord:
        check_checkpoint_id(checkpoint_id, "id")
        with self._read() as conn:
            return self._checkpoint(conn, checkpoint_id, "id")

    def list_checkpoints(self) -> list[CheckpointRecord]:
        with self._read() as conn:
            rows = conn.execute(select(t.checkpoints).order_by(t.checkpoints.c.id)).all()
        return [CheckpointRecord(r.id, r.path, r.kind, r.manifest_json, r.manifest_sha256, r.registered_at) for r in rows]

    # -- routes ---------------------------------------------------------------------------
    def set_routes(
        self, changes: Sequence[RouteChange], reason: str = "", where: str = "routes", *, actor: str = ""
    ) -> tuple[list[RouteUpdate], int]:
        """Set many routes in one transaction: all of them or, on any error, none."""
        single = where != "routes"
        seen: dict[str, int] = {}
        for i, change in enumerate(changes):
            at = where if single else f"{where}[{i}]"
            check_name(change.task, f"{at}.task")
            check_checkpoint_id(change.checkpoint_id, f"{at}.checkpoint_id")
            if change.task_version is not None and change.task_version < 1:
                raise ValidationError(f"{at}.task_version", "must be a positive integer", change.task_version)
            if change.task in seen:
                raise ValidationError(f"{at}.task", f"appears twice (also {where}[{seen[change.task]}]); a task takes one route", change.task)
            seen[change.task] = i
        with self._write(actor) as tx:
            updates = []
            for i, change in enumerate(changes):
                at = where if single else f"{where}[{i}]"
                updates.append(self._set_route(tx, change, reason, at))
            revision = tx.revision if tx.changed else tx.revision - 1
        return updates, revision

    def _set_route(self, tx: _Tx, change: RouteChange, reason: str, at: str) -> RouteUpdate:
        conn = tx.conn
        head = conn.execute(select(t.tasks).where(t.tasks.c.name == change.task)).one_or_none()
        if head is None:
            raise NotFoundError(f"{at}.task: unknown task {change.task!r}; register it first (`mtserve tasks apply`)")
        if head.status == TaskStatus.RETIRED.value:
            raise PreconditionError(f"{at}.task: task {change.task!r} is retired; register it again before routing it")
        version = change.task_version or head.latest_version
        if version > head.latest_version:
            raise NotFoundError(f"{at}.task_version: task {change.task!r} has no version {version}; its versions are 1 to {head.latest_version}")
        self._checkpoint(conn, change.checkpoint_id, f"{at}.checkpoint_id")
        current = conn.execute(select(t.routes).where(t.routes.c.task_name == change.task)).one_or_none()
        if current is not None and current.task_version == version and current.checkpoint_id == change.checkpoint_id:
            return RouteUpdate(Route(change.task, version, change.checkpoint_id, current.updated_at, current.reason), False)
        inserted = conn.execute(
            t.route_history.insert().values(
                task_name=change.task, task_version=version, checkpoint_id=change.checkpoint_id, created_at=tx.now, reason=reason,
                revision=tx.revision, actor=tx.actor,
            )
        ).inserted_primary_key
        assert inserted is not None  # None only for executemany or a non-insert statement
        history_id = inserted[0]
        values = {"task_version": version, "checkpoint_id": change.checkpoint_id, "history_id": history_id, "updated_at": tx.now, "reason": reason}
        if current is None:
            conn.execute(t.routes.insert().values(task_name=change.task, **values))
        else:
            conn.execute(update(t.routes).where(t.routes.c.task_name == change.task).values(**values))
        tx.record("set_route", f"{change.task} v{version} -> {change.checkpoint_id}", reason)
        return RouteUpdate(Route(change.task, version, change.checkpoint_id, tx.now, reason), True)

    def get_routes(self) -> tuple[list[Route], int]:
        """The route table and the revision it was read at, from one snapshot."""
        with self._read() as conn:
            return self._routes(conn), self._revision(conn)

    @staticmethod
    def _routes(conn: Connection) -> list[Route]:
        rows = conn.execute(select(t.routes).order_by(t.routes.c.task_name)).all()
        return [Route(r.task_name, r.task_version, r.checkpoint_id, r.updated_at, r.reason) for r in rows]

    def rollback(self, task: str, *, actor: str = "") -> Route:
        """Restore the route the task had before its current one. Repeated
        rollbacks walk further back; setting a route afterwards starts a new
        entry on top."""
        check_name(task, "task")
        with self._write(actor) as tx:
            conn = tx.conn
            self._record(conn, task)  # unknown task -> NOT_FOUND
            current = conn.execute(select(t.routes).where(t.routes.c.task_name == task)).one_or_none()
            if current is None:
                raise PreconditionError(f"task {task!r} has no route to roll back")
            previous = conn.execute(
                select(t.route_history)
                .where(t.route_history.c.task_name == task, t.route_history.c.rolled_back_at.is_(None), t.route_history.c.id < current.history_id)
                .order_by(t.route_history.c.id.desc())
                .limit(1)
            ).one_or_none()
            if previous is None:
                raise PreconditionError(
                    f"task {task!r} has no earlier route to roll back to (it is on checkpoint {current.checkpoint_id!r} since {current.updated_at})"
                )
            conn.execute(update(t.route_history).where(t.route_history.c.id == current.history_id).values(rolled_back_at=tx.now))
            reason = f"rollback from {current.checkpoint_id} (task version {current.task_version})"
            conn.execute(
                update(t.routes)
                .where(t.routes.c.task_name == task)
                .values(task_version=previous.task_version, checkpoint_id=previous.checkpoint_id, history_id=previous.id, updated_at=tx.now, reason=reason)
            )
            tx.record("rollback", f"{task} v{previous.task_version} -> {previous.checkpoint_id}", reason)
            return Route(task, previous.task_version, previous.checkpoint_id, tx.now, reason)

    def route_history(self, task: str) -> list[RouteHistoryEntry]:
        check_name(task, "task")
        with self._read() as conn:
            self._record(conn, task)
            current = conn.execute(select(t.routes.c.history_id).where(t.routes.c.task_name == task)).scalar_one_or_none()
            rows = conn.execute(select(t.route_history).where(t.route_history.c.task_name == task).order_by(t.route_history.c.id.desc())).all()
        return [
            RouteHistoryEntry(Route(r.task_name, r.task_version, r.checkpoint_id, r.created_at, r.reason), r.id == current, r.rolled_back_at or "", r.actor)
            for r in rows
        ]

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` writes, newest first."""
        with self._read() as conn:
            rows = conn.execute(select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit)).all()
        return [AuditEntry(r.revision, r.at, r.actor, r.action, r.target, r.reason) for r in rows]

    # -- what inference replicas follow ------------------------------------------------------
    def snapshot(self) -> RegistryState:
        """Every task's latest version plus the versions routes serve, the
        routes, the checkpoints and the policy, from one read snapshot."""
        with self._read() as conn:
            revision = self._revision(conn)
            heads = {r.name: r for r in conn.execute(select(t.tasks)).all()}
            routes = self._routes(conn)
            wanted = {(name, h.latest_version) for name, h in heads.items()} | {(r.task, r.task_version) for r in routes}
            records = [
                self._to_record(row, heads[row.name])
                for row in conn.execute(select(t.task_versions).order_by(t.task_versions.c.name, t.task_versions.c.version)).all()
                if (row.name, row.version) in wanted
            ]
            rows = conn.execute(select(t.checkpoints).order_by(t.checkpoints.c.id)).all()
            checkpoints = tuple(CheckpointRecord(r.id, r.path, r.kind, r.manifest_json, r.manifest_sha256, r.registered_at) for r in rows)
            policy = self._policy(conn)
        return RegistryState(revision=revision, tasks=tuple(records), routes=tuple(routes), checkpoints=checkpoints, policy=policy)

    def wait_for_change(self, revision: int, timeout: float) -> int:
        """Block until the revision moves past `revision` (a local commit wakes
        us at once; another replica's commit is seen within `timeout`), or the
        timeout passes. Returns the current revision."""
        with self.changed:
            current = self.revision()
            if current == revision:
                self.changed.wait(timeout)
        return self.revision()
