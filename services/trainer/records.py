"""A training job as the trainer service and its train workers see it: plain
Python (no gRPC, no Celery, no torch). The records live in the SQL database
(services/trainer/store.py); these are the values read from it.

Life of a job:

    QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | INTERRUPTED
    QUEUED -> CANCELLED
    RUNNING -(its worker died)-> RUNNING on another worker, resuming
    INTERRUPTED | FAILED | CANCELLED --ResumeJob--> QUEUED (the next attempt resumes)
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from mtserve.errors import NotFoundError, ValidationError
from mtserve.tasks import NAME_RE

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
    """One run of the job's process, on one train worker."""

    action: str  # start | resume
    pid: int
    started_at: str
    ended_at: str = ""
    exit_code: int | None = None
    outcome: str = ""
    worker: str = ""  # the Celery worker (node name) that ran it


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Progress:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


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
    folder: str  # the work folder of the latest attempt, on its worker's machine

    @property
    def done(self) -> bool:
        return not self.state.active

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        return out


def new_job_id(name: str) -> str:
    return f"{name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def check_job_id(job_id: str, where: str = "id") -> str:
    if not job_id:
        raise ValidationError(where, "must name a job (StartJob's answer; `mtserve train status` lists them)", job_id)
    if not JOB_ID_RE.match(job_id):
        # Well-formed or not, no such job exists; a malformed id must never reach a query or a path.
        raise NotFoundError(f"unknown job {job_id!r}: job ids look like <name>-YYYYMMDD-HHMMSS-xxxx")
    return job_id


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


def load_spec(spec_yaml: str, base_dir: str, *, root: Any = None, checkpoints_root: Any = None) -> Any:
    """Parse and check a job spec as the service and the worker both do: the
    base folder and every path of the spec inside `root` (and a base model
    inside `checkpoints_root` or an id) when a root is given, then the files.
    The RPC calls it before queueing; the train task calls it again with the
    worker's own roots before it starts a process, so a job record that did
    not come through the RPC is held to the same rules."""
    import os

    from mtserve.files import parse_yaml
    from mtserve.paths import caller_path, confined_path
    from trainer.job import confine, parse_job

    caller_path(base_dir, "base_dir")
    if root is not None:  # confined before anything is read there: no existence oracle outside the root
        confined_path(base_dir, "base_dir", [root.expanduser().resolve()], "the trainer root (setting trainer.root)")
    if not os.path.isdir(base_dir):
        raise ValidationError("base_dir", "is not a folder the trainer can see", base_dir)
    if not spec_yaml.strip():
        raise ValidationError("spec_yaml", "is empty: give the job spec's YAML text", "", show_value=False)
    data = parse_yaml(spec_yaml, "spec_yaml")
    spec = parse_job(data, base_dir=base_dir, source="spec_yaml")  # ValidationError names the field
    if root is not None:
        confine(spec, root, checkpoints_root or root)
    check_spec_files(spec)
    return spec


__all__ = [
    "RESUMABLE",
    "Attempt",
    "JobInfo",
    "JobState",
    "Options",
    "Progress",
    "check_job_id",
    "check_spec_files",
    "load_spec",
    "new_job_id",
    "utcnow",
]
