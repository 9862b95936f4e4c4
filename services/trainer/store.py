"""The trainer's job records in the project's SQL database (mtserve.db:
SQLite file or PostgreSQL by URL, Alembic migrations): jobs, attempts and
their event logs. Plain Python over SQLAlchemy, no gRPC, no Celery.

Two kinds of writers share it: the trainer service (StartJob, CancelJob,
ResumeJob: any number of replicas) and the train workers (claim a job, log
its events, finish it). Every read-modify-write runs in one WRITE
transaction with the job's row locked (SELECT ... FOR UPDATE on PostgreSQL;
SQLite's BEGIN IMMEDIATE serializes writers anyway), so a cancel never
crosses a claim and two workers never both claim one job.

The lease: the worker running a job owns it (`owner`) and renews
`heartbeat_at` whenever it logs events (at least every lease/3). A Celery
message for a job whose owner still heartbeats is a redelivery of a running
job (the broker's visibility timeout ran out, or a pool process died and its
successor got the message back): it is told to wait (`Claim.kind ==
"busy"`). One whose owner has been silent for the lease is a job whose worker
died: the claim ends that attempt as interrupted and starts a resume.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from mtserve import db
from mtserve.errors import NotFoundError, PreconditionError
from services.trainer import schema as t
from services.trainer.records import RESUMABLE, Attempt, JobInfo, JobState, Options, Progress, check_job_id, utcnow

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x6D74_7472  # "mttr": one process migrates at a time


class LeaseLost(Exception):
    """This worker no longer owns the job (another one took it over after
    this one was silent for the lease, or the record was removed)."""


@dataclass(frozen=True)
class Claim:
    """What a train task found when it looked at its job."""

    kind: str  # run: this worker now owns the job | busy: another live worker does | done: nothing to run
    job_id: str
    state: JobState
    action: str = ""  # run: start | resume
    attempt: int = 0  # run: this attempt's number
    spec_yaml: str = ""
    options: Options | None = None
    requested_by: str = ""
    requested_role: str = ""
    owner: str = ""  # busy: who holds it
    wait: float = 0.0  # busy: seconds until its lease would expire


def _event_json(event: dict[str, Any] | None) -> str | None:
    return None if event is None else json.dumps(event, ensure_ascii=False, default=str)


def _stamp(event: dict[str, Any]) -> dict[str, Any]:
    return {"time": round(time.time(), 3), **event}


class JobStore:
    def __init__(self, url: str, *, migrate: bool = True):
        self.url = url
        self.engine: Engine = db.make_engine(url, setting="trainer.database_url")
        if migrate:
            db.migrate(self.engine, MIGRATIONS, lock_id=_PG_MIGRATION_LOCK)

    def close(self) -> None:
        self.engine.dispose()

    def schema_revision(self) -> str | None:
        return db.schema_revision(self.engine, t.VERSION_TABLE)

    # -- transactions ------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{db.WRITE: True})
            with conn.begin():
                yield conn

    def _locked_row(self, conn: Connection, job_id: str) -> Any:
        row = conn.execute(select(t.jobs).where(t.jobs.c.id == job_id).with_for_update()).first()
        if row is None:
            raise NotFoundError(f"unknown job {job_id!r}")
        return row._mapping

    def _append(self, conn: Connection, row: Any, events: Iterable[dict[str, Any] | None], **changes: Any) -> int:
        """Append events to the job's log in this transaction, fold them into
        its progress, apply `changes` to the row; returns the next seq."""
        seq = int(row["events"])
        progress = Progress.from_dict(json.loads(row["progress_json"]))
        rows = []
        for event in events:
            if event is not None and event.get("event") == "attempt_started":
                progress = Progress(events=progress.events)  # progress is per attempt
            progress.update(event)
            rows.append({"job_id": row["id"], "seq": seq, "event_json": _event_json(event)})
            seq += 1
        if rows:
            conn.execute(insert(t.events), rows)
        conn.execute(update(t.jobs).where(t.jobs.c.id == row["id"]).values(
            events=seq, progress_json=json.dumps(progress.to_dict()), updated_at=utcnow(), **changes))
        return seq

    # -- the service's side ----------------------------------------------------------------------
    def create(self, job_id: str, name: str, spec_yaml: str, options: Options, *, requested_by: str, requested_role: str) -> None:
        now = utcnow()
        with self._write() as conn:
            conn.execute(insert(t.jobs).values(
                id=job_id, name=name, state=JobState.QUEUED.value, created_at=now, queued_at=now, updated_at=now,
                options_json=json.dumps(asdict(options)), spec_yaml=spec_yaml, next_action="start", cancel_requested=False,
                requested_by=requested_by, requested_role=requested_role, events=0, progress_json=json.dumps(Progress().to_dict()),
            ))
            row = self._locked_row(conn, job_id)
            self._append(conn, row, [_stamp({"event": "job_queued", "job": name, "id": job_id})])

    def remove(self, job_id: str) -> None:
        """Drop a job and its log (a job whose message could not be sent)."""
        with self._write() as conn:
            for table in (t.events, t.attempts):
                conn.execute(delete(table).where(table.c.job_id == job_id))
            conn.execute(delete(t.jobs).where(t.jobs.c.id == job_id))

    def _infos(self, conn: Connection, rows: Sequence[Any]) -> list[JobInfo]:
        ids = [r._mapping["id"] for r in rows]
        by_job: dict[str, list[Attempt]] = {i: [] for i in ids}
        if ids:
            a = t.attempts.c
            for r in conn.execute(select(t.attempts).where(a.job_id.in_(ids)).order_by(a.job_id, a.number)):
                m = r._mapping
                by_job[m["job_id"]].append(Attempt(action=m["action"], pid=m["pid"], started_at=m["started_at"], ended_at=m["ended_at"],
                                                   exit_code=m["exit_code"], outcome=m["outcome"], worker=m["worker"]))
        out = []
        for r in rows:
            m = r._mapping
            out.append(JobInfo(
                id=m["id"], name=m["name"], state=JobState(m["state"]), created_at=m["created_at"], started_at=m["started_at"],
                finished_at=m["finished_at"], options=Options(**json.loads(m["options_json"])), spec_yaml=m["spec_yaml"],
                progress=Progress.from_dict(json.loads(m["progress_json"])), error=m["error"], attempts=by_job[m["id"]],
                result=json.loads(m["result_json"]) if m["result_json"] else None, folder=m["folder"],
            ))
        return out

    def get(self, job_id: str) -> JobInfo:
        check_job_id(job_id)
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.jobs).where(t.jobs.c.id == job_id)).all()
            if not rows:
                raise NotFoundError(f"unknown job {job_id!r}")
            return self._infos(conn, rows)[0]

    def list(self, *, states: Sequence[JobState] = (), name: str = "", limit: int = 0) -> list[JobInfo]:
        c = t.jobs.c
        query = select(t.jobs).order_by(c.created_at.desc(), c.id.desc())
        if states:
            query = query.where(c.state.in_([s.value for s in states]))
        if name:
            query = query.where(c.name == name)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return self._infos(conn, conn.execute(query).all())

    def events(self, job_id: str, from_seq: int = 0) -> builtins.list[tuple[int, dict[str, Any] | None]]:  # `list` is a method here
        e = t.events.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(e.seq, e.event_json).where(e.job_id == job_id, e.seq >= from_seq).order_by(e.seq)).all()
        return [(int(seq), json.loads(text) if text else None) for seq, text in rows]

    def state(self, job_id: str) -> tuple[JobState, int, int]:
        """(state, attempts, events logged): what a watch compares to see a change."""
        c = t.jobs.c
        with self.engine.connect() as conn:
            row = conn.execute(select(c.state, c.events).where(c.id == job_id)).first()
            if row is None:
                raise NotFoundError(f"unknown job {job_id!r}")
            n = conn.execute(select(func.count()).where(t.attempts.c.job_id == job_id)).scalar_one()
        return JobState(row[0]), int(n), int(row[1])

    def cancel(self, job_id: str, *, lease_seconds: float, now: float | None = None) -> bool:
        """Cancel a job. Queued, interrupted, or running on a worker that
        stopped heartbeating: cancelled here and now (True). Running on a
        live worker: the request is recorded and the worker stops the
        process (False)."""
        check_job_id(job_id)
        now = time.time() if now is None else now
        with self._write() as conn:
            row = self._locked_row(conn, job_id)
            state = JobState(row["state"])
            if state is JobState.RUNNING and (row["heartbeat_at"] or 0) > now - lease_seconds:
                conn.execute(update(t.jobs).where(t.jobs.c.id == job_id).values(cancel_requested=True, updated_at=utcnow()))
                return False
            if state not in (JobState.QUEUED, JobState.INTERRUPTED, JobState.RUNNING):
                raise PreconditionError(f"job {job_id} has already {state.value}; only queued, running or interrupted jobs can be cancelled")
            error = f"cancelled while {state.value}" + (" (its worker had stopped heartbeating)" if state is JobState.RUNNING else "")
            if state is JobState.RUNNING:
                self._end_attempt(conn, job_id, "cancelled", None)
            self._append(conn, row, [_stamp({"event": "job_state", "job": row["name"], "id": job_id, "state": "cancelled", "error": error})],
                         state=JobState.CANCELLED.value, error=error, finished_at=utcnow(), owner="", cancel_requested=False)
            return True

    def queue_resume(self, job_id: str, *, requested_by: str, requested_role: str) -> None:
        check_job_id(job_id)
        with self._write() as conn:
            row = self._locked_row(conn, job_id)
            state = JobState(row["state"])
            if state not in RESUMABLE:
                raise PreconditionError(f"job {job_id} is {state.value}; only interrupted, failed or cancelled jobs can be resumed")
            self._append(conn, row, [_stamp({"event": "job_queued", "job": row["name"], "id": job_id, "action": "resume"})],
                         state=JobState.QUEUED.value, error="", next_action="resume", queued_at=utcnow(), cancel_requested=False,
                         requested_by=requested_by, requested_role=requested_role)

    # -- the worker's side -------------------------------------------------------------------------
    def claim(self, job_id: str, worker: str, *, lease_seconds: float, folder: str, now: float | None = None) -> Claim:
        """Take the job for `worker` if it is to run (queued, or running on a
        worker silent for the lease); see the module docstring."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = self._locked_row(conn, job_id)
            state = JobState(row["state"])
            lost: list[dict[str, Any] | None] = []
            if state is JobState.RUNNING:
                beat = row["heartbeat_at"] or 0.0
                if beat > now - lease_seconds:
                    return Claim("busy", job_id, state, owner=row["owner"], wait=max(0.0, beat + lease_seconds - now))
                if row["cancel_requested"]:  # its worker died before it could honour a cancel: honour it here
                    error = f"cancelled (its worker {row['owner']} had stopped heartbeating)"
                    self._end_attempt(conn, job_id, "cancelled", None)
                    self._append(conn, row, [_stamp({"event": "job_state", "job": row["name"], "id": job_id, "state": "cancelled", "error": error})],
                                 state=JobState.CANCELLED.value, error=error, finished_at=utcnow(), owner="", cancel_requested=False)
                    return Claim("done", job_id, JobState.CANCELLED)
                error = f"its worker {row['owner']} stopped heartbeating (killed, or its machine is gone); resumed on {worker}"
                self._end_attempt(conn, job_id, "interrupted", None)
                lost.append(_stamp({"event": "attempt_lost", "job": row["name"], "id": job_id, "worker": row["owner"], "error": error}))
            elif state is not JobState.QUEUED:
                return Claim("done", job_id, state)
            opts = Options(**json.loads(row["options_json"]))
            number = 1 + conn.execute(select(func.count()).where(t.attempts.c.job_id == job_id)).scalar_one()
            first = number == 1
            action = "resume" if row["next_action"] == "resume" or (first and opts.resume) or state is JobState.RUNNING else "start"
            started = utcnow()
            conn.execute(insert(t.attempts).values(job_id=job_id, number=number, action=action, worker=worker, pid=0, started_at=started))
            event = {"event": "attempt_started", "job": row["name"], "id": job_id, "action": action, "attempt": number, "worker": worker}
            self._append(conn, row, [*lost, _stamp(event)], state=JobState.RUNNING.value, started_at=started, finished_at="", error="",
                         next_action="resume", owner=worker, heartbeat_at=now, folder=folder)
            return Claim("run", job_id, JobState.RUNNING, action=action, attempt=number, spec_yaml=row["spec_yaml"], options=opts,
                         requested_by=row["requested_by"], requested_role=row["requested_role"])

    def _owned(self, conn: Connection, job_id: str, owner: str) -> Any:
        row = self._locked_row(conn, job_id)
        if row["owner"] != owner or row["state"] != JobState.RUNNING.value:
            raise LeaseLost(f"job {job_id} is no longer this worker's ({owner}): owner {row['owner']!r}, {row['state']}")
        return row

    def _end_attempt(self, conn: Connection, job_id: str, outcome: str, exit_code: int | None) -> None:
        a = t.attempts.c
        last = conn.execute(select(func.max(a.number)).where(a.job_id == job_id)).scalar_one()
        if last is not None:
            conn.execute(update(t.attempts).where(a.job_id == job_id, a.number == last, a.ended_at == "").values(
                ended_at=utcnow(), exit_code=exit_code, outcome=outcome))

    def started(self, job_id: str, owner: str, pid: int) -> None:
        """The attempt's process is running (its pid, on the owner's machine)."""
        with self._write() as conn:
            self._owned(conn, job_id, owner)
            a = t.attempts.c
            last = conn.execute(select(func.max(a.number)).where(a.job_id == job_id)).scalar_one()
            conn.execute(update(t.attempts).where(a.job_id == job_id, a.number == last).values(pid=pid))

    def log(self, job_id: str, owner: str, events: Sequence[dict[str, Any] | None], *, now: float | None = None) -> bool:
        """Append the process's events and renew the lease; returns whether a
        cancel was asked for. LeaseLost when the job is no longer ours."""
        with self._write() as conn:
            row = self._owned(conn, job_id, owner)
            self._append(conn, row, events, heartbeat_at=time.time() if now is None else now)
            return bool(row["cancel_requested"])

    def finish(self, job_id: str, owner: str, state: JobState, *, error: str = "", result: dict[str, Any] | None = None,
               exit_code: int | None = None) -> None:
        with self._write() as conn:
            row = self._owned(conn, job_id, owner)
            self._end_attempt(conn, job_id, state.value, exit_code)
            event = {"event": "job_state", "job": row["name"], "id": job_id, "state": state.value, "error": error, "exit_code": exit_code}
            self._append(conn, row, [_stamp(event)], state=state.value, error=error, finished_at=utcnow(), owner="",
                         cancel_requested=False, result_json=json.dumps(result, ensure_ascii=False, default=str) if result is not None else None)


__all__ = ["Claim", "JobStore", "LeaseLost"]
