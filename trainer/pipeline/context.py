"""The resolved job: catalogue, tasks, data, base checkpoint, output folders,
device and ranks, resolved once and shared by every run (`Context`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtserve.checkpoints import read_manifest
from mtserve.config import Settings, load_settings
from mtserve.errors import NotFoundError, ValidationError
from mtserve.models import resolve_dtype
from mtserve.precision import resolve_precision
from mtserve.tasks import Catalogue, Task, builtin_catalogue_path, load_catalogue
from trainer import checkpoint as ck
from trainer.data import DevSelection, Example, SplitData, check_no_bad_lines, load_task_data, sample_dev
from trainer.job import JobSpec, default_lr
from trainer.runs import EventLog, RunStore
from trainer.train import Dist, check_world, init_distributed

log = logging.getLogger(__name__)

Emit = Callable[[Mapping[str, Any]], None]


@dataclass
class Context:
    """Everything a job's runs share, resolved once."""

    spec: JobSpec
    settings: Settings
    catalogue: Catalogue
    tasks: list[Task]
    data: dict[str, dict[str, SplitData]]
    base_dir: Path
    checkpoints_root: Path
    store: RunStore
    device: torch.device
    dist: Dist
    emit: EventLog
    resume: bool
    restart: bool
    bad_lines: list[str] = field(default_factory=list)
    _dev: dict[str, tuple[list[Example], DevSelection]] = field(default_factory=dict)
    _tokenizers: dict[Path, Any] = field(default_factory=dict)

    @property
    def per_step(self) -> int:
        """Examples per optimizer step: the global batch, the same at any world
        size (the ranks split it, trainer.train)."""
        return self.spec.examples_per_step

    @property
    def precision(self) -> str:
        """What training.precision resolved to on this device (one probe: mtserve.precision)."""
        return resolve_precision(self.spec.training.precision, self.device)

    @functools.cached_property
    def lr(self) -> float:  # cached: it reads the base's safetensors headers
        """training.lr, or when left out the rate for this base's scale (trainer.job.default_lr)."""
        if self.spec.training.lr is not None:
            return self.spec.training.lr
        return default_lr(self.spec.finetune, ck.parameter_count(self.base_dir))

    @property
    def eval_dtype(self) -> str:
        """The dtype serving loads this device's models in; evaluation and the gate score in it."""
        return str(resolve_dtype("auto", self.device)).removeprefix("torch.")

    def train_examples(self, task: str) -> list[Example]:
        examples = self.data[task]["train"].examples
        cap = self.spec.max_train_examples
        return examples[:cap] if cap else examples

    def _dev_sample(self, task: str) -> tuple[list[Example], DevSelection]:
        if task not in self._dev:
            t = self.catalogue.task(task)
            self._dev[task] = sample_dev(t, self.data[task]["dev"].examples, self.spec.eval.dev_cap,
                                         min_per_label=self.spec.eval.min_dev_per_label)
            for warning in self._dev[task][1].warnings:
                log.warning("%s", warning)
                self.emit({"event": "dev_warning", "task": task, "warning": warning})
        return self._dev[task]

    def dev_examples(self, task: str) -> list[Example]:
        """The task's dev set: a label-stratified sample of at most eval.dev_cap
        examples, independent of the file's order (trainer.data.sample_dev)."""
        return self._dev_sample(task)[0]

    def dev_selection(self, task: str) -> DevSelection:
        return self._dev_sample(task)[1]

    def tokenizer(self, base_dir: Path) -> Any:
        """The base's tokenizer alone (run keys need token counts before any model loads)."""
        from mtserve.models import load_tokenizer

        if base_dir not in self._tokenizers:
            self._tokenizers[base_dir] = load_tokenizer(base_dir)
        return self._tokenizers[base_dir]

    def data_identity(self, task: str) -> dict[str, Any]:
        splits = ["train", "dev"] + (["test"] if self.spec.eval.test and "test" in self.data[task] else [])
        return {s: self.data[task][s].sha256 for s in splits}


def resolve_catalogue(spec: JobSpec) -> Catalogue:
    value = spec.catalogue
    candidate = spec.path(value)
    if value.endswith((".yaml", ".yml")) or "/" in value or candidate.exists():
        if not candidate.exists():
            raise ValidationError("catalogue", "no such catalogue file", str(candidate))
        return load_catalogue(candidate)
    try:
        return load_catalogue(builtin_catalogue_path(value))
    except NotFoundError as exc:
        raise ValidationError("catalogue", f"is neither a catalogue file nor a built-in catalogue ({exc})", value) from None


def resolve_tasks(spec: JobSpec, catalogue: Catalogue) -> list[Task]:
    data = spec.data_path
    if not data.is_dir():
        raise ValidationError("data_dir", "is not a folder", str(data))
    if spec.tasks is None:
        tasks = [t for t in catalogue.tasks if (data / t.name / "train.jsonl").exists()]
        if not tasks:
            raise ValidationError("data_dir", f"holds no <task>/train.jsonl for any task of catalogue {catalogue.name!r}", str(data))
        return tasks
    out = []
    for i, name in enumerate(spec.tasks):
        try:
            out.append(catalogue.task(name))
        except NotFoundError:
            raise ValidationError(f"tasks[{i}]", f"is not a task of catalogue {catalogue.name!r} ({catalogue.names})", name) from None
    for i, name in enumerate(spec.resources.high or []):
        if name not in {t.name for t in out}:
            raise ValidationError(f"resources.high[{i}]", "is not one of the job's tasks", name)
    return out


def load_data(spec: JobSpec, tasks: Sequence[Task], emit: Emit) -> tuple[dict[str, dict[str, SplitData]], list[str]]:
    splits = ("train", "dev", "test") if spec.eval.test else ("train", "dev")
    data: dict[str, dict[str, SplitData]] = {}
    for task in tasks:
        data[task.name] = load_task_data(task, spec.data_path / task.name, splits)
        if "dev" not in data[task.name]:
            raise ValidationError(
                "data", f"task {task.name!r} has no dev split; baselines, evaluation and qualification need one",
                str(spec.data_path / task.name / "dev.jsonl"),
            )
        if spec.eval.test and "test" not in data[task.name]:
            raise ValidationError("eval.test", f"task {task.name!r} has no test split", str(spec.data_path / task.name / "test.jsonl"))
    every = [s for d in data.values() for s in d.values()]
    if spec.on_bad_lines == "fail":
        check_no_bad_lines(every, hint="(or set on_bad_lines: report in the job to train without them, listed in the report)")
    bad = [str(b) for s in every for b in s.bad_lines]
    if bad:
        emit({"event": "bad_lines", "count": len(bad), "first": bad[:20]})
    for task in tasks:
        for split, sd in data[task.name].items():
            if not sd.examples:
                raise ValidationError("data", f"task {task.name!r} has no usable {split} example", str(sd.path))
    return data, bad


def resolve_base(spec: JobSpec, settings: Settings) -> Path:
    from mtserve.models import prepare_default

    if spec.base_model is None:
        return prepare_default(settings.checkpoints_root)
    candidate = spec.path(spec.base_model)
    if candidate.exists():
        path = candidate
    elif (settings.checkpoints_root / spec.base_model).exists():
        path = settings.checkpoints_root / spec.base_model
    else:
        raise ValidationError("base_model", f"is neither a folder nor a checkpoint id under {settings.checkpoints_root}", spec.base_model)
    read_manifest(path)  # a plain model folder is refused with a hint to import it
    return path.resolve()


def resolve_checkpoints_root(spec: JobSpec, settings: Settings, base_dir: Path) -> Path:
    if spec.output.checkpoints_dir is not None:
        root = spec.path(spec.output.checkpoints_dir).resolve()
    elif spec.finetune == "lora" and spec.stage0 is None:
        root = base_dir.parent.resolve()  # an adapter is loaded with its base found beside it
    else:
        root = settings.checkpoints_root.resolve()
    if spec.finetune == "lora":
        if read_manifest(base_dir).kind == "lora":
            raise ValidationError("base_model", "a LoRA adapter cannot be the base of another adapter; use its full base or finetune: full", str(base_dir))
        if spec.stage0 is None and base_dir.parent.resolve() != root:
            raise ValidationError(
                "output.checkpoints_dir",
                f"LoRA adapters must be written beside their base so loading finds it by id; the base is in {base_dir.parent}",
                str(root),
            )
    return root


def build_context(
    spec: JobSpec, *, settings: Settings | None = None, emit: Emit | None = None, resume: bool = False, restart: bool = False
) -> Context:
    from mtserve.models import resolve_device

    settings = settings or load_settings()
    dev = resolve_device(spec.device)
    dist = init_distributed(dev.type)
    check_world(spec.training.grad_accum, dist.world)  # before any run opens, not at the first Trainer
    if dist.world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    catalogue = resolve_catalogue(spec)
    tasks = resolve_tasks(spec, catalogue)
    store = RunStore(spec.runs_path)
    events = EventLog(None, emit)
    data, bad = load_data(spec, tasks, events)
    base_dir = resolve_base(spec, settings)
    root = resolve_checkpoints_root(spec, settings, base_dir)
    return Context(
        spec=spec, settings=settings, catalogue=catalogue, tasks=tasks, data=data, base_dir=base_dir,
        checkpoints_root=root, store=store, device=dev, dist=dist, emit=events, resume=resume, restart=restart, bad_lines=bad,
    )
