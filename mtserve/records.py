"""Domain records of the registry: what it stores and what inference replicas
follow. Plain dataclasses (no protobuf, no database): the store returns them,
mtserve_api/convert.py turns them into messages, and the inference side
keeps them, and writes them as its last-known-good JSON copy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mtserve.checkpoints import Manifest
from mtserve.errors import ValidationError
from mtserve.tasks import Task, TruncationPolicy, parse_task


class TaskStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True)
class TaskRecord:
    """One stored version of a task. The status belongs to the task name: every
    version of a retired task reports retired."""

    task: Task  # its version is set
    status: TaskStatus = TaskStatus.ACTIVE
    latest_version: int = 1
    created_at: str = ""

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def version(self) -> int:
        return int(self.task.version or 0)

    @property
    def key(self) -> tuple[str, int]:
        return (self.task.name, self.version)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task.to_dict(), "status": self.status.value, "latest_version": self.latest_version, "created_at": self.created_at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskRecord:
        return cls(
            task=parse_task(data["task"]),
            status=TaskStatus(data["status"]),
            latest_version=int(data["latest_version"]),
            created_at=str(data.get("created_at", "")),
        )


@dataclass(frozen=True)
class Registered:
    """The outcome of registering a task: the stored record and whether anything changed."""

    record: TaskRecord
    changed: bool


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    path: str
    kind: str
    manifest_json: str
    manifest_sha256: str
    registered_at: str = ""

    @property
    def manifest(self) -> Manifest:
        return Manifest.from_mapping(json.loads(self.manifest_json))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointRecord:
        return cls(**{k: str(data[k]) for k in ("id", "path", "kind", "manifest_json", "manifest_sha256", "registered_at")})


@dataclass(frozen=True)
class Route:
    task: str
    task_version: int
    checkpoint_id: str
    updated_at: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Route:
        return cls(str(data["task"]), int(data["task_version"]), str(data["checkpoint_id"]), str(data.get("updated_at", "")), str(data.get("reason", "")))


@dataclass(frozen=True)
class RouteChange:
    """A route to set; no version means the task's latest version."""

    task: str
    checkpoint_id: str
    task_version: int | None = None


@dataclass(frozen=True)
class RouteUpdate:
    route: Route
    changed: bool


@dataclass(frozen=True)
class RouteHistoryEntry:
    route: Route
    current: bool
    rolled_back_at: str = ""
    actor: str = ""  # the token name that set it


@dataclass(frozen=True)
class AuditEntry:
    """One committed write to the registry."""

    revision: int
    at: str
    actor: str
    action: str  # register_task | retire_task | set_policy | register_checkpoint | set_route | rollback
    target: str
    reason: str = ""


@dataclass(frozen=True)
class PolicyRecord:
    policy: TruncationPolicy = field(default_factory=TruncationPolicy)
    source: str = ""  # the catalogue that set it; "" = built-in defaults


@dataclass(frozen=True)
class RegistryState:
    """What an inference replica needs, at one registry revision: every task's
    latest version plus any older version a route still serves, the routes,
    the checkpoints and the truncation policy.

    As a watch *change*, the same shape carries only what changed (upserts:
    the registry never deletes tasks, routes or checkpoints) and `policy` is
    None unless the policy changed."""

    revision: int = 0
    tasks: tuple[TaskRecord, ...] = ()
    routes: tuple[Route, ...] = ()
    checkpoints: tuple[CheckpointRecord, ...] = ()
    policy: PolicyRecord | None = field(default_factory=PolicyRecord)

    # -- views --------------------------------------------------------------------
    def task_versions(self) -> dict[tuple[str, int], TaskRecord]:
        return {r.key: r for r in self.tasks}

    def latest(self) -> dict[str, TaskRecord]:
        """Per task name, the record with the highest version (its status is the name's status)."""
        out: dict[str, TaskRecord] = {}
        for r in self.tasks:
            if r.name not in out or r.version > out[r.name].version:
                out[r.name] = r
        return out

    def route_table(self) -> dict[str, Route]:
        return {r.task: r for r in self.routes}

    def checkpoint_table(self) -> dict[str, CheckpointRecord]:
        return {c.id: c for c in self.checkpoints}

    # -- snapshots and changes -----------------------------------------------------------
    def changes_since(self, before: RegistryState) -> RegistryState | None:
        """The upserts that turn `before` into self; None when nothing changed."""
        old_tasks, old_routes, old_cps = before.task_versions(), before.route_table(), before.checkpoint_table()
        tasks = tuple(r for r in self.tasks if old_tasks.get(r.key) != r)
        routes = tuple(r for r in self.routes if old_routes.get(r.task) != r)
        cps = tuple(c for c in self.checkpoints if old_cps.get(c.id) != c)
        policy = self.policy if self.policy != before.policy else None
        if not (tasks or routes or cps or policy is not None) and self.revision == before.revision:
            return None
        return RegistryState(revision=self.revision, tasks=tasks, routes=routes, checkpoints=cps, policy=policy)

    def apply(self, change: RegistryState) -> RegistryState:
        """This state with a watch change applied (upserts by key)."""
        tasks = self.task_versions() | {r.key: r for r in change.tasks}
        routes = self.route_table() | {r.task: r for r in change.routes}
        cps = self.checkpoint_table() | {c.id: c for c in change.checkpoints}
        return RegistryState(
            revision=change.revision,
            tasks=tuple(tasks[k] for k in sorted(tasks)),
            routes=tuple(routes[k] for k in sorted(routes)),
            checkpoints=tuple(cps[k] for k in sorted(cps)),
            policy=change.policy if change.policy is not None else self.policy,
        )

    # -- the last-known-good file ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        policy = self.policy or PolicyRecord()
        return {
            "revision": self.revision,
            "tasks": [r.to_dict() for r in self.tasks],
            "routes": [r.to_dict() for r in self.routes],
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "truncation": {"budgets": policy.policy.to_list(), "source": policy.source},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "state") -> RegistryState:
        try:
            truncation = data.get("truncation") or {}
            return cls(
                revision=int(data["revision"]),
                tasks=tuple(TaskRecord.from_dict(r) for r in data["tasks"]),
                routes=tuple(Route.from_dict(r) for r in data["routes"]),
                checkpoints=tuple(CheckpointRecord.from_dict(c) for c in data["checkpoints"]),
                policy=PolicyRecord(TruncationPolicy.from_list(truncation.get("budgets"), f"{where}.truncation"), str(truncation.get("source", ""))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError(where, f"is not a registry state file ({type(exc).__name__}: {exc})", None, show_value=False) from None


# -- what an inference replica reports (ModelInfo) -----------------------------------
@dataclass(frozen=True)
class CheckpointInfo:
    id: str
    path: str
    loaded: bool
    error: str
    queue_depth: int
    tasks: tuple[str, ...]
    dtype: str = ""  # what its weights run in; empty until loaded
    dtype_reason: str = ""  # set by configuration, or what `dtype: auto` measured (mtserve/serving_precision.py)


@dataclass(frozen=True)
class TaskInfo:
    task: str
    version: int
    checkpoint_id: str
    serving: bool
    reason: str


@dataclass(frozen=True)
class ServingInfo:
    checkpoints: tuple[CheckpointInfo, ...]
    tasks: tuple[TaskInfo, ...]
    queue_depth: int
    registry_revision: int
    registry_connected: bool
    state_source: str
