"""What a job's runs and the job produce, as types: the result.json of every
run (trainer.runs), the result `mtserve train run --json` prints, and what the
tables and reports read.

    Stage0Run       domain continual pre-training: the checkpoint that becomes the base
    SingleTaskRun   a task's baseline: the selected evaluation (possibly the untuned base,
                    zero-shot), its dev curve and saturation, its trivial baseline
    MultiTaskRun    one model for a group of tasks: its stages, every task's dev evaluation
                    and its qualification against the baselines
    JobResult       per task a TaskRow (zero-shot, baseline, multi-task, verdict, routing),
                    per model a GroupModel

Each converts to the JSON it is stored as (`to_dict`) and back (`from_dict`).
A result written by an earlier trainer reads back unchanged: the keys added
since are None in the type and stay out of its to_dict (`unrecorded`), so old
runs stay readable cache hits without being rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from trainer.data import DevSelection
from trainer.evaluate import TaskEval, Trivial
from trainer.metrics import Estimate
from trainer.qualify import Qualification
from trainer.train import StageRecord, StoppedEarly

T = TypeVar("T")

# -- the pieces of a run's result -----------------------------------------------------------


@dataclass(frozen=True)
class CheckpointRef:
    id: str
    path: str
    zero_shot: bool | None = None  # baselines only: True when the baseline is the untuned base itself (no copy written)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "path": self.path}
        if self.zero_shot is not None:
            out["zero_shot"] = self.zero_shot
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointRef:
        return cls(str(data["id"]), str(data["path"]), data.get("zero_shot"))


@dataclass(frozen=True)
class BaseRef:
    """The checkpoint a run trained from (trainer.checkpoint.base_identity)."""

    id: str
    content_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseRef:
        return cls(str(data["id"]), str(data["content_sha256"]))


@dataclass(frozen=True)
class PrecisionRecord:
    """What training.precision asked for, what ran, and what the probe saw."""

    requested: str
    resolved: str
    probe: str
    master_weights: str
    eval_dtype: str  # the dtype serving loads the model in; evaluation scored in it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrecisionRecord:
        return cls(str(data["requested"]), str(data["resolved"]), str(data["probe"]), str(data["master_weights"]), str(data["eval_dtype"]))


@dataclass(frozen=True)
class Saturation:
    """Where a task's single-task dev metric saturated (section 4.2)."""

    epoch: float  # epochs of training at the first evaluation reaching the best value
    censored: bool  # the best value was the last evaluation: still improving when the run stopped
    last_epoch: float
    high: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Saturation:
        return cls(float(data["epoch"]), bool(data["censored"]), float(data["last_epoch"]), bool(data["high"]))


@dataclass(frozen=True)
class SingleTaskPoint:
    """One dev evaluation of a baseline: its primary metric after `epochs` epochs."""

    step: int
    epochs: float
    value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SingleTaskPoint:
        return cls(int(data["step"]), float(data["epochs"]), float(data["value"]))


@dataclass(frozen=True)
class MultiTaskPoint:
    """One dev evaluation of a multi-task run: every task's primary metric. Each
    stage counts its steps from 0."""

    stage: str
    step: int
    epochs: dict[str, float]
    values: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "step": self.step, "epochs": dict(self.epochs), "values": None if self.values is None else dict(self.values)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultiTaskPoint:
        values = data.get("values")
        return cls(str(data["stage"]), int(data["step"]), dict(data["epochs"]), None if values is None else dict(values))


@dataclass(frozen=True)
class SingleTaskSelection:
    """Which evaluation a baseline keeps, in words for the tables."""

    step: int
    epochs: float
    zero_shot: bool  # the untuned base model beat every fine-tuned step
    label: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SingleTaskSelection:
        return cls(int(data["step"]), float(data["epochs"]), bool(data["zero_shot"]), str(data["label"]))


@dataclass(frozen=True)
class MultiTaskSelection:
    stage: str
    step: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultiTaskSelection:
        return cls(str(data["stage"]), int(data["step"]))


def _optional(data: Mapping[str, Any], key: str, parse: Callable[[Any], T]) -> T | None:
    value = data.get(key)
    return None if value is None else parse(value)


# -- runs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage0Run:
    run_id: str
    checkpoint: CheckpointRef  # the domain-adapted model: the base of the job's other runs
    steps: int
    tokens: int
    seconds: float

    kind = "stage0"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "run_id": self.run_id, "checkpoint": self.checkpoint.to_dict(), "steps": self.steps,
                "tokens": self.tokens, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stage0Run:
        return cls(str(data["run_id"]), CheckpointRef.from_dict(data["checkpoint"]), int(data["steps"]), int(data["tokens"]),
                   float(data["seconds"]))


# Added to baselines' results after the 2026-12-01 reproduction runs were written.
_SINGLE_TASK_KEYS_ADDED_LATER = frozenset({"trivial", "degenerate", "dev_selection", "precision", "stopped_early"})


@dataclass
class SingleTaskRun:
    """A task's baseline (trainer.pipeline.baselines)."""

    run_id: str
    key: str
    task: str
    base: BaseRef
    checkpoint: CheckpointRef
    selected: SingleTaskSelection
    dev: TaskEval  # the selected evaluation
    zero_shot: TaskEval  # the evaluation before the first update
    test: TaskEval | None  # the selected checkpoint on the test split (eval.test)
    history: list[SingleTaskPoint]  # every dev evaluation, in training order
    saturation: Saturation
    steps: int
    tokens: int
    seconds: float
    trivial: Trivial | None = None
    degenerate: bool | None = None  # the baseline does not beat its trivial baseline
    dev_selection: DevSelection | None = None
    precision: PrecisionRecord | None = None
    stopped_early: StoppedEarly | None = None  # patience ended the run
    unrecorded: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    kind = "single_task"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind, "run_id": self.run_id, "key": self.key, "task": self.task, "checkpoint": self.checkpoint.to_dict(),
            "base": self.base.to_dict(), "selected": self.selected.to_dict(), "dev": self.dev.to_dict(),
            "zero_shot": self.zero_shot.to_dict(), "test": None if self.test is None else self.test.to_dict(),
            "history": [h.to_dict() for h in self.history], "saturation": self.saturation.to_dict(),
            "steps": self.steps, "tokens": self.tokens, "seconds": self.seconds,
            "trivial": None if self.trivial is None else self.trivial.to_dict(), "degenerate": self.degenerate,
            "dev_selection": None if self.dev_selection is None else self.dev_selection.to_dict(),
            "precision": None if self.precision is None else self.precision.to_dict(),
            "stopped_early": None if self.stopped_early is None else self.stopped_early.to_dict(),
        }
        return {k: v for k, v in out.items() if k not in self.unrecorded}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SingleTaskRun:
        return cls(
            run_id=str(data["run_id"]), key=str(data["key"]), task=str(data["task"]), base=BaseRef.from_dict(data["base"]),
            checkpoint=CheckpointRef.from_dict(data["checkpoint"]), selected=SingleTaskSelection.from_dict(data["selected"]),
            dev=TaskEval.from_dict(data["dev"]), zero_shot=TaskEval.from_dict(data["zero_shot"]),
            test=_optional(data, "test", TaskEval.from_dict), history=[SingleTaskPoint.from_dict(h) for h in data["history"]],
            saturation=Saturation.from_dict(data["saturation"]), steps=int(data["steps"]), tokens=int(data["tokens"]),
            seconds=float(data["seconds"]), trivial=_optional(data, "trivial", Trivial.from_dict), degenerate=data.get("degenerate"),
            dev_selection=_optional(data, "dev_selection", DevSelection.from_dict),
            precision=_optional(data, "precision", PrecisionRecord.from_dict),
            stopped_early=_optional(data, "stopped_early", StoppedEarly.from_dict),
            unrecorded=_SINGLE_TASK_KEYS_ADDED_LATER - data.keys(),
        )


# Added to multi-task results after the 2026-12-01 reproduction runs were written.
_MULTI_TASK_KEYS_ADDED_LATER = frozenset({"precision", "history"})


@dataclass
class MultiTaskRun:
    """One model for a group of tasks (trainer.pipeline.multitask)."""

    run_id: str
    key: str
    job: str
    group: str
    method: str
    tasks: list[str]
    high: list[str]  # the high-resource tasks (stage 1 of two_stage)
    base: BaseRef
    checkpoint: CheckpointRef
    stages: list[StageRecord]
    selected: MultiTaskSelection
    dev: dict[str, TaskEval]  # every task at the selected step
    qualification: dict[str, Qualification]  # every task with a baseline
    qualified: list[str]
    test: dict[str, TaskEval] | None  # the selected checkpoint on the test splits (eval.test)
    steps: int
    tokens: int
    seconds: float
    precision: PrecisionRecord | None = None
    history: list[MultiTaskPoint] = field(default_factory=list)  # every dev evaluation, stage by stage
    unrecorded: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    kind = "multi_task"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind, "run_id": self.run_id, "key": self.key, "group": self.group, "method": self.method, "tasks": list(self.tasks),
            "job": self.job, "base": self.base.to_dict(), "checkpoint": self.checkpoint.to_dict(),
            "dev": {n: ev.to_dict() for n, ev in self.dev.items()},
            "qualification": {n: q.to_dict() for n, q in self.qualification.items()}, "qualified": list(self.qualified),
            "test": None if self.test is None else {n: ev.to_dict() for n, ev in self.test.items()}, "high": list(self.high),
            "stages": [s.to_dict() for s in self.stages], "steps": self.steps, "tokens": self.tokens, "seconds": self.seconds,
            "selected": self.selected.to_dict(), "precision": None if self.precision is None else self.precision.to_dict(),
            "history": [h.to_dict() for h in self.history],
        }
        return {k: v for k, v in out.items() if k not in self.unrecorded}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultiTaskRun:
        return cls(
            run_id=str(data["run_id"]), key=str(data["key"]), job=str(data["job"]), group=str(data["group"]), method=str(data["method"]),
            tasks=[str(t) for t in data["tasks"]], high=[str(t) for t in data["high"]], base=BaseRef.from_dict(data["base"]),
            checkpoint=CheckpointRef.from_dict(data["checkpoint"]), stages=[StageRecord.from_dict(s) for s in data["stages"]],
            selected=MultiTaskSelection.from_dict(data["selected"]), dev={n: TaskEval.from_dict(v) for n, v in data["dev"].items()},
            qualification={n: Qualification.from_dict(q) for n, q in data["qualification"].items()},
            qualified=[str(t) for t in data["qualified"]],
            test=_optional(data, "test", lambda t: {n: TaskEval.from_dict(v) for n, v in t.items()}),
            steps=int(data["steps"]), tokens=int(data["tokens"]), seconds=float(data["seconds"]),
            precision=_optional(data, "precision", PrecisionRecord.from_dict),
            history=[MultiTaskPoint.from_dict(h) for h in data.get("history", [])],
            unrecorded=_MULTI_TASK_KEYS_ADDED_LATER - data.keys(),
        )


# -- the job ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricEstimate:
    """A task's primary metric with its interval: a cell of a job's table."""

    metric: str
    estimate: Estimate

    @classmethod
    def of(cls, ev: TaskEval) -> MetricEstimate:
        return cls(ev.primary, ev.value)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, **self.estimate.to_dict()}


def trivial_summary(trivial: Trivial) -> dict[str, Any] | None:
    """The trivial baseline as tables and manifests show it (None where it is not defined)."""
    if trivial.eval is None:
        return None
    return {"rule": trivial.rule, "answer": trivial.to_dict()["answer"], **MetricEstimate.of(trivial.eval).to_dict()}


@dataclass
class TaskRow:
    """One task of a job: its scores before and after, its verdict, and what
    --promote does with it."""

    task: str
    task_version: int | None
    definition_hash: str  # the definition trained and evaluated: promotion compares it with the registry's
    trivial: Trivial  # beside every task, with or without a trained baseline
    dev_warnings: list[str]
    group: str | None = None
    checkpoint: str | None = None  # the task's model: its group's, else its baseline's
    metric: str | None = None
    zero_shot: MetricEstimate | None = None
    baseline: MetricEstimate | None = None
    baseline_checkpoint: str | None = None
    baseline_selected: str | None = None
    degenerate_baseline: bool | None = None
    multi_task: MetricEstimate | None = None
    # The ratio to the baseline and its interval, as JSON holds them (an infinite ratio is None).
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None
    qualified: bool | None = None
    verdict: str | None = None
    routes_on_promote: bool = False  # trainer.promote routes the point rule's qualified tasks

    def to_dict(self) -> dict[str, Any]:
        def score(s: MetricEstimate | None) -> dict[str, Any] | None:
            return None if s is None else s.to_dict()

        # In the order `mtserve train run --json` has always printed.
        return {
            "task": self.task, "metric": self.metric, "zero_shot": score(self.zero_shot), "baseline": score(self.baseline),
            "baseline_checkpoint": self.baseline_checkpoint, "baseline_selected": self.baseline_selected,
            "multi_task": score(self.multi_task), "ratio": self.ratio, "ratio_low": self.ratio_low, "ratio_high": self.ratio_high,
            "qualified": self.qualified, "verdict": self.verdict, "group": self.group, "trivial": trivial_summary(self.trivial),
            "degenerate_baseline": self.degenerate_baseline, "routes_on_promote": self.routes_on_promote,
            "dev_warnings": list(self.dev_warnings), "task_version": self.task_version, "definition_hash": self.definition_hash,
            "checkpoint": self.checkpoint,
        }


@dataclass(frozen=True)
class GroupModel:
    """One model of a job: a task group's multi-task run, or, for a group of
    one task, that task's baseline (training it again would only reproduce it)."""

    group: str
    run: MultiTaskRun | SingleTaskRun

    @property
    def reused_baseline(self) -> bool:
        return isinstance(self.run, SingleTaskRun)

    @property
    def tasks(self) -> list[str]:
        return [self.run.task] if isinstance(self.run, SingleTaskRun) else list(self.run.tasks)

    @property
    def qualified(self) -> list[str]:
        return [self.run.task] if isinstance(self.run, SingleTaskRun) else list(self.run.qualified)

    @property
    def dev(self) -> dict[str, TaskEval]:
        return {self.run.task: self.run.dev} if isinstance(self.run, SingleTaskRun) else self.run.dev

    @property
    def qualification(self) -> dict[str, Qualification]:
        return {} if isinstance(self.run, SingleTaskRun) else self.run.qualification

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "tasks": self.tasks, "checkpoint": self.run.checkpoint.to_dict(), "qualified": self.qualified,
                "run_id": self.run.run_id, "reused_baseline": self.reused_baseline}


@dataclass
class JobResult:
    job: str
    method: str
    rows: list[TaskRow]
    groups: list[GroupModel]  # none for single_task: every baseline is its own model
    checkpoints: list[str]  # the final models' folders
    overhead: float | None
    num_qualified: int
    runs: list[str]
    bad_lines: list[str]
    seconds: float
    table_markdown: str = ""
    report_files: dict[str, str] = field(default_factory=dict)  # the job report (markdown) and its plots

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job, "method": self.method, "rows": [r.to_dict() for r in self.rows], "groups": [g.to_dict() for g in self.groups],
            "checkpoints": list(self.checkpoints), "overhead": self.overhead, "num_qualified": self.num_qualified, "runs": list(self.runs),
            "bad_lines": list(self.bad_lines), "seconds": self.seconds, "table_markdown": self.table_markdown,
            "report_files": dict(self.report_files),
        }


__all__ = [
    "BaseRef",
    "CheckpointRef",
    "GroupModel",
    "JobResult",
    "MetricEstimate",
    "MultiTaskPoint",
    "MultiTaskRun",
    "MultiTaskSelection",
    "PrecisionRecord",
    "Saturation",
    "SingleTaskPoint",
    "SingleTaskRun",
    "SingleTaskSelection",
    "Stage0Run",
    "TaskRow",
    "trivial_summary",
]
