"""The trainer service's job records and their store: plain Python, no gRPC.

One folder per job under the jobs folder (`trainer.jobs_dir`, default
`$MTSERVE_HOME/trainer-jobs`):

    <jobs_dir>/
        .service.lock      held by the one service that owns this folder
        <job id>/
            job.json       the record (state, options, attempts, result), replaced atomically
            spec.yaml      the spec as submitted
            events.jsonl   the job process's stdout (JSON lines) and the service's lifecycle events
            stderr.log     the job process's stderr

Why files and not SQLite: a job already owns a folder (its spec, its event log,
its stderr), the service is the only writer (the lock refuses a second
service on the same folder, which would otherwise take the first one's
running jobs for interrupted ones), records are read and written whole, and
nothing queries across jobs but a listing of a few hundred folders. A JSON
record replaced by rename is durable and atomic, readable with `cat`, and
needs no schema migrations; the event log is a file either way, since the job
process writes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from mtserve.errors import NotFoundError, PreconditionError, ValidationError
from mtserve.tasks import NAME_RE

JOB_FILE = "job.json"
SPEC_FILE = "spec.yaml"
EVENTS_FILE = "events.jsonl"
STDERR_FILE = "stderr.log"
LOCK_FILE = ".service.lock"
# <spec name>-<UTC date>-<UTC time>-<4 hex>; the name follows the task/job name rule
JOB_ID_RE = re.compile(NAME_RE.pattern.removesuffix("$") + r"-\d{8}-\d{6}-[0-9a-f]{4}$")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def active(self) -> bool:
        return self in (JobState.QUEUED, JobState.RUNNING)


RESUMABLE = (JobState.INTERRUPTED, JobState.FAILED, JobState.CANCELLED)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Options:
    promote: bool = False
    register: bool = False
    registry_address: str = ""
    base_dir: str = ""
    # for the first attempt only (later attempts always resume)
    resume: bool = False
    restart: bool = False


@dataclass
class Attempt:
    action: str  # start | resume
    pid: int
    started_at: str
    events_offset: int  # where this attempt's events begin in events.jsonl (bytes)
    stderr_offset: int = 0  # and its stderr in stderr.log
    proc_start: int | None = None  # the process's start time (clock ticks since boot): a pid reused later is not ours
    ended_at: str = ""
    exit_code: int | None = None
    outcome: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})  # type: ignore[arg-type]


@dataclass
class JobRecord:
    id: str
    name: str
    state: JobState
    created_at: str
    options: Options
    updated_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    error: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    next_action: str = "start"  # what the next attempt does: start | resume
    queued_at: str = ""  # queued jobs start in this order

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRecord:
        return cls(
            id=data["id"], name=data["name"], state=JobState(data["state"]), created_at=data["created_at"],
            options=Options(**data.get("options", {})), updated_at=data.get("updated_at", ""), started_at=data.get("started_at", ""),
            finished_at=data.get("finished_at", ""), error=data.get("error", ""),
            attempts=[Attempt.from_dict(a) for a in data.get("attempts", [])], result=data.get("result"),
            cancel_requested=bool(data.get("cancel_requested", False)), next_action=data.get("next_action", "start"),
            queued_at=data.get("queued_at", ""),
        )


def new_job_id(name: str) -> str:
    return f"{name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def check_job_id(job_id: str, where: str = "id") -> str:
    if not job_id:
        raise ValidationError(where, "must name a job (StartJob's answer; `mtserve train status` lists them)", job_id)
    if not JOB_ID_RE.match(job_id):
        # Well-formed or not, no such job exists; a malformed id must never reach the file system.
        raise NotFoundError(f"unknown job {job_id!r}: job ids look like <name>-YYYYMMDD-HHMMSS-xxxx")
    return job_id


class JobStore:
    """Job folders under `root`; one service at a time (`lock()`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None

    # -- the service lock -------------------------------------------------------------
    def lock(self) -> None:
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PreconditionError(
                f"another trainer service (pid {holder}) owns the jobs folder {self.root}; stop it or give this one another trainer.jobs_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None

    # -- records ------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def events_path(self, job_id: str) -> Path:
        return self.folder(job_id) / EVENTS_FILE

    def create(self, record: JobRecord, spec_yaml: str) -> None:
        folder = self.folder(record.id)
        folder.mkdir(parents=True, exist_ok=False)
        (folder / SPEC_FILE).write_text(spec_yaml, encoding="utf-8")
        (folder / EVENTS_FILE).touch()
        self.save(record)

    def save(self, record: JobRecord) -> None:
        record.updated_at = utcnow()
        path = self.folder(record.id) / JOB_FILE
        tmp = path.with_name(f".{JOB_FILE}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fp:
            json.dump(record.to_dict(), fp, ensure_ascii=False, indent=1)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)

    def load(self, job_id: str) -> JobRecord:
        path = self.folder(check_job_id(job_id)) / JOB_FILE
        try:
            return JobRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise NotFoundError(f"unknown job {job_id!r}") from None

    def spec(self, job_id: str) -> str:
        return (self.folder(job_id) / SPEC_FILE).read_text(encoding="utf-8")

    def all(self) -> list[JobRecord]:
        out = []
        for path in sorted(self.root.glob(f"*/{JOB_FILE}")):
            try:
                out.append(JobRecord.from_dict(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError) as exc:  # a damaged record must not hide the others
                import logging

                logging.getLogger(__name__).warning("skipping unreadable job record %s: %s", path, exc)
        return out

    def append_event(self, job_id: str, event: Mapping[str, Any]) -> None:
        """A service event in the job's log: one write on an O_APPEND file, so
        it never tears a line of the job process (which appends too)."""
        line = (json.dumps({"time": round(datetime.now(UTC).timestamp(), 3), **event}, ensure_ascii=False, default=str) + "\n").encode()
        fd = os.open(self.events_path(job_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def remove(self, job_id: str) -> None:  # pragma: no cover - housekeeping
        shutil.rmtree(self.folder(check_job_id(job_id)), ignore_errors=True)


# -- reading an event log ---------------------------------------------------------------------


class EventReader:
    """Reads complete lines appended to an event log since the last call (a
    line still being written is left for the next call). `seq` numbers every
    line from 0, whether or not it parses."""

    def __init__(self, path: Path, offset: int = 0, seq: int = 0):
        self.path = path
        self.offset = offset
        self.seq = seq

    def read(self) -> list[tuple[int, dict[str, Any] | None]]:
        try:
            with open(self.path, "rb") as fp:
                fp.seek(self.offset)
                data = fp.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        out: list[tuple[int, dict[str, Any] | None]] = []
        for raw in data[: end + 1].splitlines():
            try:
                value = json.loads(raw)
                event = value if isinstance(value, dict) else None
            except ValueError:
                event = None  # a stray print of a library: counted, not parsed
            out.append((self.seq, event))
            self.seq += 1
        self.offset += end + 1
        return out


def events_since(path: Path, offset: int) -> list[dict[str, Any]]:
    return [e for _, e in EventReader(path, offset).read() if e is not None]


@dataclass
class Progress:
    run: str = ""
    stage: str = ""
    step: int = 0
    steps: int = 0
    loss: float = 0.0
    tokens_per_s: float = 0.0
    last_event: str = ""
    runs_done: int = 0
    events: int = 0
    dev: dict[str, float] = field(default_factory=dict)

    def update(self, event: Mapping[str, Any] | None) -> None:
        self.events += 1
        if event is None:
            return
        kind = str(event.get("event", ""))
        self.last_event = kind
        if event.get("run"):
            self.run = str(event["run"])
        if kind == "stage_started":
            self.stage, self.step, self.steps = str(event.get("stage", "")), 0, int(event.get("steps") or 0)
        elif kind == "step":
            self.stage = str(event.get("stage", self.stage))
            self.step, self.steps = int(event.get("step") or 0), int(event.get("steps") or self.steps)
            self.loss, self.tokens_per_s = float(event.get("loss") or 0.0), float(event.get("tokens_per_s") or 0.0)
        elif kind == "eval":
            values = (event.get("summary") or {}).get("values") or {}
            self.dev = {str(k): float(v) for k, v in values.items() if isinstance(v, (int, float))}
        elif kind in ("run_finished", "run_cached"):
            self.runs_done += 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobInfo:
    """A job as the service shows it: the record, its spec and its progress."""

    id: str
    name: str
    state: JobState
    created_at: str
    started_at: str
    finished_at: str
    options: Options
    spec_yaml: str
    progress: Progress
    error: str
    attempts: list[Attempt]
    result: dict[str, Any] | None
    folder: str

    @property
    def done(self) -> bool:
        return not self.state.active

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        for a in out["attempts"]:
            for key in ("events_offset", "stderr_offset", "proc_start"):
                a.pop(key, None)
        return out


# -- light spec checks (no torch) -----------------------------------------------------------------


def check_spec_files(spec: Any) -> None:
    """What the job process would refuse in its first second, checked at
    StartJob so the caller hears it as INVALID_ARGUMENT: the catalogue
    resolves, the tasks are in it, the data folder exists. The same rules as
    trainer.pipeline.resolve_catalogue / resolve_tasks, without importing
    torch into the service; the job process checks everything again."""
    from mtserve.tasks import builtin_catalogue_path, load_catalogue

    value = spec.catalogue
    candidate = spec.path(value)
    if value.endswith((".yaml", ".yml")) or "/" in value or candidate.exists():
        if not candidate.exists():
            raise ValidationError("catalogue", "no such catalogue file", value)
        catalogue = load_catalogue(candidate)
    else:
        try:
            catalogue = load_catalogue(builtin_catalogue_path(value))
        except NotFoundError as exc:
            raise ValidationError("catalogue", f"is neither a catalogue file nor a built-in catalogue ({exc})", value) from None
    if not spec.data_path.is_dir():
        raise ValidationError("data_dir", "is not a folder", spec.data_dir)
    names = set(catalogue.names)
    for i, name in enumerate(spec.tasks or []):
        if name not in names:
            raise ValidationError(f"tasks[{i}]", f"is not a task of catalogue {catalogue.name!r} ({catalogue.names})", name)


__all__ = [
    "RESUMABLE",
    "Attempt",
    "EventReader",
    "JobInfo",
    "JobRecord",
    "JobState",
    "JobStore",
    "Options",
    "Progress",
    "check_job_id",
    "check_spec_files",
    "events_since",
    "new_job_id",
    "utcnow",
]
