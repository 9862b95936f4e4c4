"""The training job spec: one YAML file, taken by `mtserve train run -f` and
(later) by the trainer service.

Every key has a default (Table 6 of the paper where the paper gives one), every
value is checked when the file is read, and every refusal names the key, the
rule and the value given. Unknown keys are refused, and so is a setting the
chosen method would silently ignore (a `tau` for instance-balanced sampling is a
typo for another method, not a no-op), in the spirit of
`trainer.sampling.rates_for`.

    name: hotel-toy                 # names the runs and checkpoints: ^[a-z][a-z0-9_-]{1,63}$
    catalogue: hotel                # a built-in catalogue name or a path to a catalogue YAML
    data_dir: data                  # <data_dir>/<task>/{train,dev,test}.jsonl
    tasks: [ec, rtc]                # default: every catalogue task that has a data folder
    base_model: null                # checkpoint folder or id; null: the prepared default model
    method: two_stage               # single_task | instance_balanced | class_balanced | temperature
                                    # | temperature_capped | unimax | two_stage
    finetune: full                  # full | lora (settings under `lora:`)
    seed: 0
    max_steps: 15000                # optimizer steps per run, all stages of the run together (appendix A)
    max_seq_len: 512                # tokens of prompt + answer; longer inputs are cut further
    max_train_examples: null        # per task: the first N lines of train.jsonl
    on_bad_lines: fail              # fail | report
    device: auto                    # auto | cpu | cuda | cuda:N
    training:   {lr: null, micro_batch: 1, grad_accum: 8, ...}   # lr null: by model scale (default_lr)
    mixture:    {stage1_epochs: 1, stage2_epochs: 10, cap_k: 8000, tau: 3.33, ...}
    baselines:  {train: true, epochs: 10, ...}
    resources:  {high: null, saturation_epochs: 5}
    task_filter: {group_by: kind}   # kind | taxonomy | none
    stage0:     null                # {corpus: corpus.txt, epochs: 1}
    lora:       null                # {r: 16, alpha: 32, dropout: 0.05, target_modules: [...]}
    eval:       {every_steps: 50, multitask_every_steps: 0, dev_cap: 1000, test: false}
    output:     {runs_dir: runs, checkpoints_dir: null}
    promote:    false               # at the end: register the checkpoints, route the qualified tasks

Relative paths are relative to the folder of the spec file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from mtserve.errors import ValidationError
from mtserve.files import load_yaml
from mtserve.paths import confined_path
from mtserve.tasks import NAME_RE

METHODS: tuple[str, ...] = (
    "single_task",
    "instance_balanced",
    "class_balanced",
    "temperature",
    "temperature_capped",
    "unimax",
    "two_stage",
)
Method = Literal["single_task", "instance_balanced", "class_balanced", "temperature", "temperature_capped", "unimax", "two_stage"]

# Which mixture settings each method reads; an explicitly set one it does not
# read is refused.
METHOD_SETTINGS: dict[str, frozenset[str]] = {
    "single_task": frozenset(),
    "instance_balanced": frozenset({"suffixes", "stage2_epochs", "stage2_steps"}),
    "class_balanced": frozenset({"suffixes", "stage2_epochs", "stage2_steps"}),
    "temperature": frozenset({"suffixes", "stage2_epochs", "stage2_steps", "tau"}),
    "temperature_capped": frozenset({"suffixes", "stage2_epochs", "stage2_steps", "tau", "cap_k"}),
    "unimax": frozenset({"suffixes", "stage2_epochs", "stage2_steps", "unimax_max_epochs"}),
    "two_stage": frozenset({"suffixes", "stage1_epochs", "stage1_steps", "stage2_epochs", "stage2_steps", "tau", "cap_k"}),
}

# Learning rates when `training.lr` is left out, by fine-tuning mode and model
# scale. Table 6's 3e-5 is the paper's for Qwen2-7B over 15,000 steps; a 135M
# model trained for a hundred CPU steps barely moves at it, so models under
# LARGE_MODEL_PARAMS take the rates the learning-rate sweep of
# docs/training.md chose on dev (SmolLM2-135M, `mtserve train sweep`) where it
# has chosen. LoRA on a large model: 2e-4, the common LoRA rate (the paper
# fine-tunes fully).
LARGE_MODEL_PARAMS = 1_000_000_000
# LoRA: the sweep's choice (1e-3: 75.0 dev accuracy vs 52.0 at 3e-4 and 51.5,
# the majority class, at 3e-3). Full fine-tuning: the sweep's choice (3e-4:
# 75.5, vs 69.0 at 1e-4 and 51.5, the majority class, at Table 6's 3e-5; the
# top of its grid, 2026-12-02).
SMALL_FULL_LR = 3e-4
SMALL_LORA_LR = 1e-3
DEFAULT_LR: dict[tuple[str, str], float] = {
    ("full", "large"): 3e-5,
    ("lora", "large"): 2e-4,
    ("full", "small"): SMALL_FULL_LR,
    ("lora", "small"): SMALL_LORA_LR,
}


def default_lr(finetune: str, n_params: int) -> float:
    """The learning rate of a job that does not set one (see DEFAULT_LR)."""
    return DEFAULT_LR[(finetune, "large" if n_params >= LARGE_MODEL_PARAMS else "small")]


DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# -- number types: YAML reads `3e-5` (no dot) as a string, and bool is an int -----------
def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")  # noqa: TRY004 - pydantic reports ValueError as a field error, TypeError not
    return value


def _float(value: Any) -> Any:
    value = _no_bool(value)
    if isinstance(value, str):
        try:
            value = float(value)  # "3e-5": YAML 1.1 needs a dot to read a float
        except ValueError:
            raise ValueError("must be a number") from None
    if isinstance(value, (int, float)) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_float)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainingSpec(_Section):
    """Optimizer and batching, shared by every run of the job (stage 0 may override lr)."""

    # null (the default): by model scale, `default_lr` below (Table 6's 3e-5 for
    # models of 1B parameters and more); a number: that rate.
    lr: Float | None = Field(default=None, gt=0)
    micro_batch: Int = Field(default=1, ge=1)  # Table 6: batch size 1 ...
    grad_accum: Int = Field(default=8, ge=1)  # ... x gradient accumulation 8
    weight_decay: Float = Field(default=0.0, ge=0)
    warmup_ratio: Float = Field(default=0.03, ge=0, lt=1)  # not in the paper; a common fine-tuning value
    max_grad_norm: Float | None = Field(default=1.0, gt=0)
    # Length grouping: sort the examples of this many optimizer steps by length
    # and cut micro-batches from the sorted list (less padding when micro_batch > 1).
    length_group_steps: Int = Field(default=8, ge=1)
    # Multi-label examples: `sample_one` trains one label question per drawn
    # example (a different one each time it is drawn); `expand` makes every
    # label question its own training example (the task counts n x labels).
    multilabel: Literal["sample_one", "expand"] = "sample_one"
    # auto: bf16 autocast where the device has bf16 matrix units (a CUDA GPU that
    # supports it, a CPU with AMX-BF16; mtserve.precision), else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    state_every_steps: Int = Field(default=100, ge=1)  # how often the resumable training state is written
    log_every_steps: Int = Field(default=1, ge=1)


class MixtureSpec(_Section):
    """The sampling stages (paper sections 3.1 and 4.2; Table 6 defaults, the
    "Application" column: K 8000, tau 3.33; CLUE used K 20000, tau 2)."""

    stage1_epochs: Float = Field(default=1.0, gt=0)
    stage2_epochs: Float = Field(default=10.0, gt=0)  # also the epochs of the one-stage methods
    stage1_steps: Int | None = Field(default=None, ge=1)  # explicit step counts override epochs
    stage2_steps: Int | None = Field(default=None, ge=1)
    cap_k: Int = Field(default=8000, ge=1)
    tau: Float = Field(default=3.33, gt=0)
    unimax_max_epochs: Float = Field(default=5.0, gt=0)
    # How the multi-task model is asked (mtserve.prompt.SUFFIXES): the
    # natural-language instruction, or the short "Task: NAME" marker it learns
    # in fine-tuning (cheaper to serve; zero-shot and baselines stay natural).
    suffixes: Literal["natural", "compact"] = "natural"


class BaselineSpec(_Section):
    """Single-task baselines: one run per task, same code path, best dev checkpoint kept."""

    train: bool = True
    epochs: Float = Field(default=10.0, gt=0)
    steps: Int | None = Field(default=None, ge=1)
    max_steps: Int | None = Field(default=None, ge=1)  # default: the job's max_steps


class ResourceSpec(_Section):
    """High- vs low-resource tasks (section 4.2): given, or from each task's
    single-task run (the epoch where its dev metric saturates > saturation_epochs)."""

    high: list[str] | None = None
    saturation_epochs: Float = Field(default=5.0, gt=0)


class TaskFilterSpec(_Section):
    """Task filter (section 4.1): one model per group. kind: classification
    apart from generation; taxonomy: binary / ordinal / multiclass / multilabel /
    generation each apart; none: one model for every task."""

    group_by: Literal["kind", "taxonomy", "none"] = "kind"


class Stage0Spec(_Section):
    """Domain continual pre-training (appendix E): causal-LM loss on a plain-text
    corpus (documents separated by blank lines), cut into max_seq_len blocks."""

    corpus: str
    epochs: Float = Field(default=1.0, gt=0)
    steps: Int | None = Field(default=None, ge=1)
    lr: Float | None = Field(default=None, gt=0)  # default: training.lr


class LoraSpec(_Section):
    r: Int = Field(default=16, ge=1)
    alpha: Float = Field(default=32.0, gt=0)
    dropout: Float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


class EvalSpec(_Section):
    every_steps: Int = Field(default=50, ge=1)  # single-task baselines: dev evaluation period (best kept)
    multitask_every_steps: Int = Field(default=0, ge=0)  # multi-task runs: 0 = evaluate at the end only
    # At most N dev examples per task: a deterministic sample stratified by label,
    # independent of the file's order (trainer.data.sample_dev); null: all of them.
    dev_cap: Int | None = Field(default=1000, ge=1)
    # Warn (result, manifest, CLI) when a label has fewer dev examples than this.
    min_dev_per_label: Int = Field(default=10, ge=1)
    # Single-task baselines stop after this many evaluations in a row without a
    # new best dev score (0: train every step); the best evaluation is kept.
    patience: Int = Field(default=5, ge=0)
    test: bool = False  # also score the test split with the final checkpoints
    batch_size: Int = Field(default=64, ge=1)
    max_batch_tokens: Int = Field(default=8192, ge=64)


class OutputSpec(_Section):
    runs_dir: str = "runs"
    checkpoints_dir: str | None = None  # default: the settings' checkpoints root (LoRA: the base's folder)


class JobSpec(_Section):
    name: str
    catalogue: str = "hotel"
    data_dir: str
    tasks: list[str] | None = None
    base_model: str | None = None
    method: Method = "two_stage"
    finetune: Literal["full", "lora"] = "full"
    seed: Int = Field(default=0, ge=0)
    max_steps: Int = Field(default=15000, ge=1)
    max_seq_len: Int = Field(default=512, ge=32, le=131072)
    max_train_examples: Int | None = Field(default=None, ge=1)
    on_bad_lines: Literal["fail", "report"] = "fail"
    device: str = "auto"
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    mixture: MixtureSpec = Field(default_factory=MixtureSpec)
    baselines: BaselineSpec = Field(default_factory=BaselineSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    task_filter: TaskFilterSpec = Field(default_factory=TaskFilterSpec)
    stage0: Stage0Spec | None = None
    lora: LoraSpec | None = None
    eval: EvalSpec = Field(default_factory=EvalSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    # When the job ends, register its checkpoints with the registry and route
    # each qualified task to its new checkpoint (trainer/promote.py); the same
    # as `--promote` on the command line. Not part of any run key.
    promote: bool = False

    # Where relative paths start (the spec file's folder); not part of the YAML.
    _base_dir: Path = Path(".")

    # -- derived --------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def path(self, value: str) -> Path:
        """A spec path, resolved against the spec file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    @property
    def data_path(self) -> Path:
        return self.path(self.data_dir)

    @property
    def runs_path(self) -> Path:
        return self.path(self.output.runs_dir)

    @property
    def lora_settings(self) -> LoraSpec | None:
        """The LoRA settings when fine-tuning with LoRA (defaults if the section is absent)."""
        if self.finetune != "lora":
            return None
        return self.lora or LoraSpec()

    @property
    def examples_per_step(self) -> int:
        return self.training.micro_batch * self.training.grad_accum

    def to_dict(self) -> dict[str, Any]:
        """Every setting, defaults filled in (the resolved spec)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


# -- parsing ---------------------------------------------------------------------------


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and re.search(r"[\[(]|^function-|^literal", part):
            continue  # a union branch ("list[str]"), not a key
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "job"


def _set(section: BaseModel, key: str) -> bool:
    """Given with a value other than its default. A resolved spec (every key
    written out) must parse again, so a key at its default counts as unset."""
    return key in section.model_fields_set and getattr(section, key) != type(section).model_fields[key].get_default(call_default_factory=True)


def _check_rules(spec: JobSpec) -> None:
    """Rules across fields (types and ranges are pydantic's)."""
    if not NAME_RE.match(spec.name):
        raise ValidationError("name", f"must match {NAME_RE.pattern}", spec.name)
    if spec.tasks is not None:
        if not spec.tasks:
            raise ValidationError("tasks", "must name at least one task (or be left out: every task with data)", spec.tasks)
        seen: set[str] = set()
        for i, name in enumerate(spec.tasks):
            if name in seen:
                raise ValidationError(f"tasks[{i}]", "names a task twice", name)
            seen.add(name)
    if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", spec.device):
        raise ValidationError("device", "must be auto, cpu, cuda or cuda:N", spec.device)
    if spec.lora is not None and spec.finetune != "lora":
        raise ValidationError("lora", "LoRA settings are given but finetune is full; set finetune: lora or drop the section", spec.lora.model_dump())
    used = METHOD_SETTINGS[spec.method]
    for key in sorted(spec.mixture.model_fields_set):
        if key not in used and _set(spec.mixture, key):
            raise ValidationError(
                f"mixture.{key}", f"is not used by method {spec.method!r}; leave it unset", getattr(spec.mixture, key)
            )
    if spec.method == "single_task":
        for key in sorted(k for k in spec.resources.model_fields_set if _set(spec.resources, k)):
            raise ValidationError(f"resources.{key}", "is not used by method 'single_task'; leave it unset", getattr(spec.resources, key))
    if spec.resources.high is not None:
        if spec.method != "two_stage":
            raise ValidationError("resources.high", f"only two_stage splits tasks by resource; method is {spec.method!r}", spec.resources.high)
        for i, name in enumerate(spec.resources.high):
            if spec.tasks is not None and name not in spec.tasks:
                raise ValidationError(f"resources.high[{i}]", f"is not one of the job's tasks {spec.tasks}", name)
    if spec.method == "two_stage" and spec.resources.high is None and not spec.baselines.train:
        raise ValidationError(
            "resources.high",
            "two_stage needs to know the high-resource tasks: list them here, or set baselines.train: true to measure them",
            None,
            show_value=False,
        )
    if spec.baselines.steps is not None and _set(spec.baselines, "epochs"):
        raise ValidationError("baselines.steps", "give baselines.epochs or baselines.steps, not both", spec.baselines.steps)
    for stage in ("stage1", "stage2"):
        if getattr(spec.mixture, f"{stage}_steps") is not None and _set(spec.mixture, f"{stage}_epochs"):
            raise ValidationError(f"mixture.{stage}_steps", f"give mixture.{stage}_epochs or mixture.{stage}_steps, not both", getattr(spec.mixture, f"{stage}_steps"))
    if spec.stage0 is not None:
        if not spec.stage0.corpus.strip():
            raise ValidationError("stage0.corpus", "must name a plain-text corpus file", spec.stage0.corpus)
        if spec.stage0.steps is not None and _set(spec.stage0, "epochs"):
            raise ValidationError("stage0.steps", "give stage0.epochs or stage0.steps, not both", spec.stage0.steps)
    lora = spec.lora_settings
    if lora is not None and isinstance(lora.target_modules, list) and not lora.target_modules:
        raise ValidationError("lora.target_modules", "must name at least one module (or be all-linear)", lora.target_modules)
    if spec.training.micro_batch * spec.training.grad_accum > 4096:
        raise ValidationError("training.micro_batch", "micro_batch x grad_accum must be at most 4096 examples per step", spec.examples_per_step)


def parse_job(data: Any, base_dir: str | Path = ".", source: str = "job") -> JobSpec:
    """Validate a job mapping (the parsed YAML). Raises ValidationError naming
    the field, the rule and the value."""
    if not isinstance(data, Mapping):
        raise ValidationError(source, "must be a mapping of job settings", type(data).__name__)
    try:
        spec = JobSpec.model_validate(dict(data))
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        where = _where(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            model: Any = JobSpec
            for part in parent:
                if isinstance(part, int):
                    continue
                ann = model.model_fields[part].annotation
                model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
            allowed = sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
            raise ValidationError(where, f"unknown key; allowed keys are {allowed}", err["loc"][-1], show_value=False) from None
        if err["type"] == "missing":
            raise ValidationError(where, "is required", None, show_value=False) from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ValidationError(where, msg[0].lower() + msg[1:], err.get("input")) from None
    spec._base_dir = Path(base_dir).expanduser().resolve()
    _check_rules(spec)
    return spec


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job YAML file."""
    path = Path(path)
    return parse_job(load_yaml(path, "job"), base_dir=path.parent, source=path.name)


__all__ = [
    "DEFAULT_LORA_TARGETS",
    "METHODS",
    "BaselineSpec",
    "EvalSpec",
    "JobSpec",
    "LoraSpec",
    "MixtureSpec",
    "OutputSpec",
    "ResourceSpec",
    "Stage0Spec",
    "TaskFilterSpec",
    "TrainingSpec",
    "default_lr",
    "load_job",
    "parse_job",
]


def confine(spec: JobSpec, root: Path, checkpoints_root: Path) -> None:
    """What a job run for someone else (the trainer service, its job
    processes) may touch: its folder, every output folder, its catalogue file
    and data folder inside `root`, and a base model named by checkpoint id or
    lying inside `checkpoints_root`. Paths are resolved first, so `..` and
    symbolic links cannot lead out. Raises ValidationError naming the field
    and quoting the spec's own string, never a path of the server's."""
    roots = [root.expanduser().resolve()]
    in_root = "the trainer root (setting trainer.root)"
    confined_path(str(spec.base_dir), "base_dir", roots, in_root)
    base = spec.base_dir.resolve()
    fields = {"output.runs_dir": spec.output.runs_dir, "data_dir": spec.data_dir}
    if spec.output.checkpoints_dir is not None:
        fields["output.checkpoints_dir"] = spec.output.checkpoints_dir
    if spec.catalogue.endswith((".yaml", ".yml")) or "/" in spec.catalogue:  # a file, not a built-in catalogue's name
        fields["catalogue"] = spec.catalogue
    for field, value in fields.items():
        confined_path(value, field, roots, in_root, base=base)
    # A folder (the pipeline looks for one relative to the job's folder before
    # it looks up an id under the checkpoint root), not an id.
    if spec.base_model is not None and ("/" in spec.base_model or spec.base_model.startswith(("~", ".")) or (base / spec.base_model).exists()):
        confined_path(spec.base_model, "base_model", [checkpoints_root.expanduser().resolve()],
                      "the checkpoint root (setting checkpoints_dir), or be a checkpoint id", base=base)
