"""Registration and promotion when a training job ends.

    register   every final checkpoint of the job (one per task group; for
               `single_task`, one per task) is registered with the registry,
               which verifies its manifest and file hashes
    promote    (when asked: `--promote`, `promote: true` in the spec, or the
               trainer service's request) every *qualified* task's route moves
               to the checkpoint of its group, all of them in ONE SetRoutes
               transaction: a reader sees every move or none. Unqualified
               tasks keep their route.

A task moves only when

  * it qualified: its dev metric reached 99% of its single-task baseline (the
    paper's rule on the point estimates, `trainer.qualify`); a task of a
    `single_task` job, or the only task of its group, is its own baseline;
  * the registry knows it, it is not retired, and the registry's *current*
    version of the task has the definition the checkpoint was trained on
    (content hashes compared): a task whose definition changed since training
    stays where it is, with the reason. The route names that task version.

Everything else stays, and the report says why (the verdict, the ratio with
its 95% interval, or the registry's objection). The registry is any object
with the methods of `mtserve_api.registry.RegistryClient` used below
(`RegistryStore` has them too); this module imports no gRPC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mtserve.errors import MtserveError, NotFoundError, PreconditionError, UnavailableError
from mtserve.records import CheckpointRecord, Route, RouteChange, RouteUpdate, TaskRecord, TaskStatus
from mtserve.tasks import Task

if TYPE_CHECKING:  # trainer.results imports torch; this module must not (the trainer service imports it)
    from trainer.results import JobResult, TaskRow

MOVED = "moved"  # the route now names the job's checkpoint
ALREADY = "already routed"  # it did before (a job promoted twice, say)
STAYED = "stayed"  # the route was left as it was


class Registry(Protocol):
    def register_checkpoint(self, path: str) -> tuple[CheckpointRecord, bool]: ...

    def get_task(self, name: str) -> TaskRecord: ...

    def get_routes(self) -> tuple[list[Route], int]: ...

    def set_routes(self, changes: Sequence[RouteChange], *, reason: str = "") -> tuple[list[RouteUpdate], int]: ...


@dataclass(frozen=True)
class RoutePlace:
    """Where a task's route points: the checkpoint and the task version it names."""

    checkpoint_id: str
    task_version: int

    @classmethod
    def of(cls, route: Route) -> RoutePlace:
        return cls(route.checkpoint_id, route.task_version)


@dataclass(frozen=True)
class RegisteredCheckpoint:
    """One of the job's checkpoints, as the registry registered it."""

    id: str
    path: str
    changed: bool  # False: it was registered already, with the same manifest


@dataclass
class TaskPromotion:
    """What happened to one task's route, and why."""

    task: str
    action: str  # moved | already routed | stayed
    checkpoint_id: str | None  # the job's model for the task
    reason: str
    qualified: bool | None = None
    verdict: str | None = None
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None
    task_version: int | None = None  # the version the (new) route names, or the registry's current one
    route_before: RoutePlace | None = None  # None: no route
    route_after: RoutePlace | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # the routes as {"checkpoint_id", "task_version"}


@dataclass
class PromotionReport:
    job: str
    registry: str  # the address (or a description) of the registry used
    promote: bool  # routes were asked to move; False: registration only
    registered: list[RegisteredCheckpoint] = field(default_factory=list)
    tasks: list[TaskPromotion] = field(default_factory=list)
    revision: int | None = None  # the registry revision of the route transaction (None: no route changed)
    reason: str = ""  # kept in the route history of every task moved

    @property
    def moved(self) -> list[str]:
        return [t.task for t in self.tasks if t.action == MOVED]

    @property
    def stayed(self) -> list[str]:
        return [t.task for t in self.tasks if t.action == STAYED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job, "registry": self.registry, "promote": self.promote, "registered": [asdict(c) for c in self.registered],
            "tasks": [t.to_dict() for t in self.tasks], "moved": self.moved, "stayed": self.stayed,
            "already_routed": [t.task for t in self.tasks if t.action == ALREADY], "revision": self.revision, "reason": self.reason,
        }


# -- planning (pure) ------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def ratio_text(row: TaskRow) -> str:
    if row.ratio is None:
        return "ratio -"
    if row.ratio_low is None:
        return f"ratio {_fmt(row.ratio)}"
    return f"ratio {_fmt(row.ratio)} (95% CI {_fmt(row.ratio_low)}-{_fmt(row.ratio_high)})"


def qualification_of(method: str, row: TaskRow) -> tuple[bool | None, str | None, str]:
    """(qualified, verdict, why) of a task of a job of this method."""
    if method == "single_task":
        return True, "single-task model", "a single-task job's model is its own baseline"
    qualified, verdict = row.qualified, row.verdict
    if qualified is None:
        return None, None, "no qualification verdict: there is no single-task baseline to compare with (baselines.train: false)"
    ratio = ratio_text(row)
    degenerate = "; against a degenerate baseline (it does not beat its trivial baseline)" if row.degenerate_baseline else ""
    if verdict and "within noise" in verdict:
        word = "qualified" if qualified else "not qualified"
        return bool(qualified), verdict, f"{word} by the point rule, within noise: {ratio} straddles 0.99 of its baseline{degenerate if qualified else ''}"
    if qualified:
        return True, verdict, f"qualified: {ratio}, at or above 0.99 of its baseline{degenerate}"
    return False, verdict, f"not qualified: {ratio}, below 0.99 of its baseline"


def plan(
    result: JobResult,
    registry_tasks: Mapping[str, TaskRecord | None],
    routes: Mapping[str, Route],
    checkpoints: Mapping[str, CheckpointRecord],
) -> tuple[list[RouteChange], list[TaskPromotion]]:
    """The route changes of a promotion and the outcome of every task.

    result          the job's result
    registry_tasks  task name -> the registry's current version (None: unknown)
    routes          the registry's route table before the change
    checkpoints     the job's registered checkpoints by id (their manifests
                    are cross-checked against the trained definitions)
    """
    changes: list[RouteChange] = []
    out: list[TaskPromotion] = []
    for row in result.rows:
        name, cid = row.task, row.checkpoint
        qualified, verdict, why = qualification_of(result.method, row)
        current = routes.get(name)
        before = RoutePlace.of(current) if current else None
        entry = TaskPromotion(
            task=name, action=STAYED, checkpoint_id=cid, reason=why, qualified=qualified, verdict=verdict,
            ratio=row.ratio, ratio_low=row.ratio_low, ratio_high=row.ratio_high, route_before=before, route_after=before,
        )
        out.append(entry)
        if not qualified:
            continue
        if cid is None or cid not in checkpoints:
            entry.reason = f"{why}; but the job has no registered checkpoint for it"
            continue
        record = registry_tasks.get(name)
        if record is None:
            entry.reason = f"{why}; but the registry does not know the task: register it (`mtserve tasks apply -f CATALOGUE`) and promote again"
            continue
        entry.task_version = record.version
        if record.status is TaskStatus.RETIRED:
            entry.reason = f"{why}; but the task is retired in the registry"
            continue
        trained = row.definition_hash
        if not trained:
            entry.reason = f"{why}; but the job result does not say which task definition was trained (re-run the job to refresh it)"
            continue
        registered = record.task.content_hash()
        if registered != trained:
            entry.reason = (
                f"{why}; but the task's definition changed since training: the registry's current version {record.version} "
                f"has definition {registered[:12]}, the checkpoint was trained on {trained[:12]}; train on the current definition"
            )
            continue
        listed = {t.get("name"): t.get("content_hash") for t in json.loads(checkpoints[cid].manifest_json).get("tasks", [])}
        if name in listed and listed[name] != trained:
            entry.reason = f"{why}; but checkpoint {cid}'s manifest lists another definition of the task ({str(listed[name])[:12]})"
            continue
        if current is not None and current.checkpoint_id == cid and current.task_version == record.version:
            entry.action, entry.reason = ALREADY, why
            continue
        entry.action, entry.reason = MOVED, why
        entry.route_after = RoutePlace(cid, record.version)
        changes.append(RouteChange(name, cid, record.version))
    return changes, out


# -- doing it ---------------------------------------------------------------------------------


def check_registry(registry: Registry, address: str, tasks: Sequence[Task] = (), *, what: str = "--promote") -> dict[str, Any]:
    """Before training: the registry answers (else PreconditionError, so a job
    asked to promote fails now rather than after hours of training), and which
    of the job's tasks it could not route as things stand. Returns an event."""
    try:
        _, revision = registry.get_routes()
    except (UnavailableError, OSError) as exc:
        raise PreconditionError(
            f"{what}: the registry at {address} is not reachable ({exc}); start it (`mtserve serve registry`) "
            "or point --registry at it. Nothing was trained."
        ) from None
    warnings = []
    for task in tasks:
        try:
            record = registry.get_task(task.name)
        except NotFoundError:
            warnings.append(f"{task.name}: not in the registry; it will not be promoted unless it is registered before the job ends")
            continue
        if record.status is TaskStatus.RETIRED:
            warnings.append(f"{task.name}: retired in the registry; it will not be promoted")
        elif record.task.content_hash() != task.content_hash():
            warnings.append(
                f"{task.name}: the registry's version {record.version} differs from the definition this job trains; "
                "it will not be promoted unless that version is registered before the job ends"
            )
    return {"event": "registry_checked", "registry": address, "revision": revision, "warnings": warnings}


# The probe must answer quickly; registering a job's checkpoints hashes every
# file of each on the registry's side, hence the long timeout of the client
# kept for the end of the job.
CHECK_TIMEOUT_SECONDS = 10.0
REGISTER_TIMEOUT_SECONDS = 600.0


def connect_registry(spec: Any, address: str, *, promote: bool) -> tuple[Any, dict[str, Any]]:
    """Before training a job that registers (or promotes): the registry at
    `address` answers and knows the job's tasks (`check_registry`). Returns a
    client for the end of the job and the check's event. The gRPC client is
    imported here, so this module stays importable without grpc."""
    from mtserve_api.registry import RegistryClient
    from trainer.pipeline.context import resolve_catalogue, resolve_tasks

    tasks = resolve_tasks(spec, resolve_catalogue(spec))
    with RegistryClient(address, timeout=CHECK_TIMEOUT_SECONDS) as probe:
        event = check_registry(probe, address, tasks, what="--promote" if promote else "--register")
    return RegistryClient(address, timeout=REGISTER_TIMEOUT_SECONDS), event


def register_and_promote(result: JobResult, registry: Registry, *, promote: bool, address: str = "") -> PromotionReport:
    """Register the job's checkpoints; when `promote`, move every qualified
    task whose definition the registry still has, in one transaction."""
    job = result.job
    report = PromotionReport(job=job, registry=address, promote=promote)
    by_id: dict[str, CheckpointRecord] = {}
    for path in result.checkpoints:
        record, changed = registry.register_checkpoint(str(path))
        by_id[record.id] = record
        report.registered.append(RegisteredCheckpoint(record.id, record.path, changed))
    if not promote:
        return report
    routes, _ = registry.get_routes()
    tasks: dict[str, TaskRecord | None] = {}
    for row in result.rows:
        try:
            tasks[row.task] = registry.get_task(row.task)
        except NotFoundError:
            tasks[row.task] = None
    changes, report.tasks = plan(result, tasks, {r.task: r for r in routes}, by_id)
    if changes:
        ids = sorted({c.checkpoint_id for c in changes})
        report.reason = f"promoted by training job {job}: qualified against its single-task baseline on {', '.join(ids)}"
        updates, revision = registry.set_routes(changes, reason=report.reason)
        report.revision = revision
        entries = {t.task: t for t in report.tasks}
        for update in updates:
            entry = entries[update.route.task]
            entry.route_after = RoutePlace.of(update.route)
            if not update.changed:  # another promotion got there between our read and our write
                entry.action = ALREADY
    return report


def finish_job(
    result: JobResult, registry: Registry, *, promote: bool, address: str, emit: Any = None, result_file: Any = None
) -> PromotionReport:
    """`register_and_promote` for a finished job, as the CLI and `python -m
    trainer run` do it: events `promotion` (or `promotion_failed`, then the
    error is raised), and the report added to the job's result file."""
    try:
        report = register_and_promote(result, registry, promote=promote, address=address)
    except MtserveError as exc:
        if emit is not None:
            emit({"event": "promotion_failed", "registry": address, "error": str(exc)})
        raise PreconditionError(
            f"training finished (checkpoints: {', '.join(map(str, result.checkpoints))}), but "
            f"{'promotion' if promote else 'registration'} with the registry at {address} failed: {exc}. "
            "Run the job again with --resume when the registry is back: finished runs are reused."
        ) from None
    if emit is not None:
        emit({"event": "promotion", **report.to_dict()})
    if result_file is not None:
        from trainer.checkpoint import write_json

        write_json(result_file, {**result.to_dict(), "promotion": report.to_dict()})
    return report


__all__ = [
    "ALREADY", "MOVED", "STAYED", "PromotionReport", "RegisteredCheckpoint", "Registry", "RoutePlace", "TaskPromotion",
    "check_registry", "finish_job", "plan", "qualification_of", "register_and_promote",
]
