"""The staged pipeline of a training job (paper Figure 2), as cached runs:

    stage 0 (optional)   domain continual pre-training on a corpus -> a full checkpoint, the new base
    baselines            one single-task run per task, from the base, evaluated on dev every
                         `eval.every_steps` steps *and before the first update* (zero-shot);
                         the best of those evaluations is the baseline (possibly the untuned
                         base model itself, labelled as such)
    task filter          tasks grouped by taxonomy; one model per group (section 4.1)
    resource grouping    high-resource = saturation epoch > 5 (section 4.2), or as listed
    multi-task runs      per group: the method's stages, e.g. two_stage = stage 1 (high-resource
                         tasks, instance-balanced) then stage 2 (all tasks, temperature-scaled
                         with cap K); evaluated on every task's dev split, qualified against the
                         baselines (99% rule with a paired-bootstrap interval), checkpointed with
                         a manifest

Every run is cached in the run store (trainer.runs) under a key of what
determines it, so a job stopped half-way resumes at the run (and the step)
where it stopped, and a job sharing baselines with another reuses them.

Step counts: a stage of E epochs over a pool of n examples at b examples per
optimizer step (micro_batch x grad_accum x ranks) runs ceil(E x n / b) steps,
where the pool is sum n_l for instance-, class-balanced, temperature and UniMax,
and sum min(n_l, K) for the capped mixture (stage 2); explicit `*_steps`
settings replace the computation. The job's `max_steps` caps each run (all its
stages together, the paper's 15,000, appendix A); when two stages exceed it,
both are scaled down in proportion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from mtserve.checkpoints import checkpoint_dir, read_manifest
from mtserve.config import Settings, load_settings
from mtserve.errors import NotFoundError, ValidationError
from mtserve.models import resolve_dtype
from mtserve.precision import autocast_dtype, probe_description, resolve_precision
from mtserve.prompt import PROMPT_FORMAT, PromptRenderer
from mtserve.tasks import Catalogue, Task, builtin_catalogue_path, load_catalogue
from trainer import checkpoint as ck
from trainer.data import DEV_SELECTION, DevSelection, Example, SplitData, check_no_bad_lines, load_task_data, sample_dev
from trainer.evaluate import TaskEval, Trivial, evaluate_many, is_degenerate, trivial_baseline
from trainer.job import JobSpec, default_lr
from trainer.qualify import Qualification, overhead, qualify
from trainer.runs import EVENTS, EventLog, RunStore, run_key
from trainer.sampling import rates_for
from trainer.train import (
    Dist,
    EvalPoint,
    LoopSettings,
    StagePlan,
    Trainer,
    TrainSet,
    barrier,
    encode_task,
    init_distributed,
    read_corpus_blocks,
    unwrap,
)

log = logging.getLogger(__name__)

Emit = Callable[[Mapping[str, Any]], None]


# -- pure planning functions ---------------------------------------------------------------


def group_tasks(tasks: Sequence[Task], group_by: str) -> dict[str, list[Task]]:
    """The task filter (section 4.1): group name -> tasks, in the given order.

    kind      classification (binary, ordinal, multiclass, multilabel) | generation
    taxonomy  binary | ordinal | multiclass | multilabel | generation (the paper's
              finer grouping, Table 5)
    none      all (one model for everything, e.g. Table 2's mixed run)
    """
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        if group_by == "kind":
            name = "generation" if task.is_generation else "classification"
        elif group_by == "taxonomy":
            name = task.taxonomy.value
        elif group_by == "none":
            name = "all"
        else:
            raise ValidationError("task_filter.group_by", "must be kind, taxonomy or none", group_by)
        groups.setdefault(name, []).append(task)
    return groups


@dataclass(frozen=True)
class Saturation:
    """Where a task's single-task dev metric saturated (section 4.2)."""

    epoch: float  # epochs of training at the first evaluation reaching the best value
    censored: bool  # the best value was the last evaluation: still improving when the run stopped
    last_epoch: float
    high: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def saturation(history: Sequence[Mapping[str, Any]], threshold: float) -> Saturation:
    """From a single-task run's evaluations [{"epochs": e, "value": v}, ...]
    in training order: the epoch of the first evaluation that reaches the best
    value. High-resource when that epoch is > threshold (the paper's "overfits
    after more than 5 epochs"); when the best is the last evaluation the run
    stopped before saturating (censored), and the task counts as high-resource:
    it was still learning, which is what stage 1 is for. At CPU scale nearly
    every run is censored before 5 epochs; name the tasks in resources.high."""
    if not history:
        raise ValidationError("baseline history", "needs at least one evaluation to find a saturation epoch", 0)
    best = max(h["value"] for h in history)
    first = next(h for h in history if h["value"] >= best)
    last = history[-1]
    censored = first is last and len(history) > 1
    epoch = float(first["epochs"])
    return Saturation(epoch=epoch, censored=censored, last_epoch=float(last["epochs"]), high=epoch > threshold or censored)


def steps_for(epochs: float, pool: int, per_step: int) -> int:
    return max(1, math.ceil(epochs * pool / per_step))


def plan_stages(
    spec: JobSpec, method: str, sizes: Mapping[str, int], high: Sequence[str], per_step: int, *, lr: float
) -> tuple[list[StagePlan], dict[str, Any]]:
    """The stages of one multi-task run over `sizes` (task -> training examples),
    and notes on how their lengths were set. `lr`: the resolved rate (Context.lr)."""
    mx = spec.mixture
    every = spec.eval.multitask_every_steps
    pool_all = sum(sizes.values())
    pool_capped = sum(min(n, mx.cap_k) for n in sizes.values())
    notes: dict[str, Any] = {"examples_per_step": per_step, "max_steps": spec.max_steps}
    if method == "two_stage":
        high_sizes = {t: n for t, n in sizes.items() if t in set(high)}
        s1 = 0
        if high_sizes:
            s1 = mx.stage1_steps or steps_for(mx.stage1_epochs, sum(high_sizes.values()), per_step)
        s2 = mx.stage2_steps or steps_for(mx.stage2_epochs, pool_capped, per_step)
        if s1 + s2 > spec.max_steps:
            notes["uncapped_steps"] = {"stage1": s1, "stage2": s2}
            new_s1 = max(1, round(spec.max_steps * s1 / (s1 + s2))) if s1 else 0
            new_s1 = min(new_s1, spec.max_steps - 1)
            s1, s2 = new_s1, spec.max_steps - new_s1
        stages = []
        if s1:
            stages.append(StagePlan("stage1", _rates("instance_balanced", high_sizes), s1, lr, strategy="instance_balanced"))
        else:
            notes["stage1"] = "skipped: no high-resource task in this group"
        stages.append(
            StagePlan(
                "stage2", rates_for("temperature_capped", sizes, tau=mx.tau, cap_k=mx.cap_k), s2, lr,
                strategy="temperature_capped", eval_every=every, eval_at_end=True, select_best=every > 0,
            )
        )
        return stages, notes
    pool = pool_capped if method == "temperature_capped" else pool_all
    steps = mx.stage2_steps or steps_for(mx.stage2_epochs, pool, per_step)
    if steps > spec.max_steps:
        notes["uncapped_steps"] = {"mixture": steps}
        steps = spec.max_steps
    if method == "unimax":
        rates = rates_for("unimax", sizes, budget=steps * per_step, max_epochs=mx.unimax_max_epochs)
    elif method == "temperature":
        rates = rates_for("temperature", sizes, tau=mx.tau)
    elif method == "temperature_capped":
        rates = rates_for("temperature_capped", sizes, tau=mx.tau, cap_k=mx.cap_k)
    else:
        rates = _rates(method, sizes)
    return [StagePlan("mixture", rates, steps, lr, strategy=method, eval_every=every, eval_at_end=True, select_best=every > 0)], notes


def _rates(strategy: str, sizes: Mapping[str, int]) -> dict[str, float]:
    return rates_for(strategy, dict(sizes))


def baseline_steps(spec: JobSpec, n: int, per_step: int) -> tuple[int, dict[str, Any]]:
    b = spec.baselines
    cap = b.max_steps or spec.max_steps
    steps = b.steps or steps_for(b.epochs, n, per_step)
    notes: dict[str, Any] = {"examples_per_step": per_step, "max_steps": cap}
    if steps > cap:
        notes["uncapped_steps"] = steps
        steps = cap
    return steps, notes


# -- the resolved job ------------------------------------------------------------------------


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
        return self.spec.examples_per_step * self.dist.world

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


# -- model preparation and evaluation ---------------------------------------------------------


def load_model(ctx: Context, base_dir: Path, *, lora: bool) -> tuple[Any, Any]:
    """The base in float32 on the job's device, with fresh LoRA layers if asked
    (initialized under the job's seed)."""
    from mtserve.models import load_checkpoint

    # root=None: a LoRA base finds its own base beside it, where this trainer writes adapters
    loaded = load_checkpoint(base_dir, device=str(ctx.device), dtype="float32", root=None)
    model = loaded.model
    settings = ctx.spec.lora_settings
    if lora and settings is not None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(ctx.spec.seed)
        # peft annotates lora_alpha as int but only divides by it: a float alpha works.
        config = LoraConfig(
            r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,  # type: ignore[arg-type]
            target_modules=settings.target_modules, task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            raise ValidationError("lora.target_modules", f"do not match the model's modules ({exc})", settings.target_modules) from None
    model.train()
    return model, loaded.tokenizer


def task_records(tasks: Sequence[Task]) -> list[dict[str, Any]]:
    """Manifest entries: name, version, taxonomy, label set, definition hash."""
    return [
        {
            "name": t.name, "version": t.version, "taxonomy": t.taxonomy.value, "content_hash": t.content_hash(),
            "labels": [{"name": lb.name, "verbalizer": lb.verbalizer} for lb in t.labels],
        }
        for t in tasks
    ]


def score_dev(
    ctx: Context, model: Any, tokenizer: Any, tasks: Sequence[Task], *, split: str = "dev", label: str = "", emit: Emit | None = None
) -> dict[str, TaskEval]:
    """Evaluate through the serving engine (constrained decoding)."""
    from mtserve.engine import Engine

    engine = Engine(unwrap(model), tokenizer, ctx.catalogue.truncation, max_batch_tokens=ctx.spec.eval.max_batch_tokens, name=label)
    # Score in the dtype serving will load the model in (float32 weights are
    # kept; bf16 serving is matched with autocast, float32 serving runs as is).
    cast = autocast_dtype("bf16" if ctx.eval_dtype == "bfloat16" else "fp32")
    pairs = []
    for t in tasks:
        examples = ctx.dev_examples(t.name) if split == "dev" else ctx.data[t.name][split].examples
        pairs.append((t, examples))
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if emit is not None and (time.monotonic() - last[0] > 2.0 or done == total):
            last[0] = time.monotonic()
            emit({"event": "eval_progress", "split": split, "done": done, "total": total})

    with torch.autocast(ctx.device.type, dtype=cast) if cast is not None else contextlib.nullcontext():
        return evaluate_many(engine, pairs, batch_size=ctx.spec.eval.batch_size, split=split, checkpoint=label or None, progress=progress)


def _estimate(ev: TaskEval) -> dict[str, Any]:
    return {"metric": ev.primary, **ev.value.to_dict()}


def make_evaluator(
    ctx: Context, tokenizer: Any, tasks: Sequence[Task], baselines: Mapping[str, TaskEval] | None, label: str, emit: Emit
) -> Callable[[Any, str, int, dict[str, float]], EvalPoint]:
    """Scores the model on the tasks' dev sets. Score to maximize: the primary
    metric (one task); (qualified tasks, mean metric) with baselines; else the mean."""

    def evaluate(model: Any, stage: str, step: int, epochs: dict[str, float]) -> EvalPoint:
        evals = score_dev(ctx, model, tokenizer, tasks, label=f"{label}@{stage}:{step}", emit=emit)
        values = {n: ev.value.value for n, ev in evals.items()}
        mean = sum(values.values()) / len(values)
        summary: dict[str, Any] = {"values": values, "metrics": {n: ev.primary for n, ev in evals.items()}, "mean": mean}
        if baselines and len(tasks) > 1:
            quals = {n: qualify(ev, baselines[n]) for n, ev in evals.items() if n in baselines}
            qualified = sorted(n for n, q in quals.items() if q.qualified)
            summary["qualified"] = qualified
            score: tuple[float, ...] = (float(len(qualified)), mean)
        else:
            score = (mean,)
        return EvalPoint(score=score, summary=summary, payload={n: ev.to_dict() for n, ev in evals.items()})

    return evaluate


def loop_settings(spec: JobSpec) -> LoopSettings:
    t = spec.training
    return LoopSettings(
        seed=spec.seed, micro_batch=t.micro_batch, grad_accum=t.grad_accum, length_group_steps=t.length_group_steps,
        weight_decay=t.weight_decay, warmup_ratio=t.warmup_ratio, max_grad_norm=t.max_grad_norm, precision=t.precision,
        state_every=t.state_every_steps, log_every=t.log_every_steps,
    )


def _hyper(ctx: Context) -> dict[str, Any]:
    """The settings that change what training produces, resolved: the precision
    `auto` chose, the prompt format, the dtype evaluation scores in (not logging
    cadence, not output paths)."""
    spec = ctx.spec
    t = spec.training.model_dump(mode="json")
    t.pop("state_every_steps")
    t.pop("log_every_steps")
    t["precision"] = ctx.precision
    t["lr"] = ctx.lr
    return {"training": t, "max_seq_len": spec.max_seq_len, "seed": spec.seed, "finetune": spec.finetune,
            "lora": spec.lora_settings.model_dump(mode="json") if spec.lora_settings else None,
            "prompt_format": PROMPT_FORMAT, "eval_dtype": ctx.eval_dtype}


def _precision_record(ctx: Context) -> dict[str, Any]:
    """For manifests: what was asked, what ran, and what the probe saw."""
    return {"requested": ctx.spec.training.precision, "resolved": ctx.precision, "probe": probe_description(ctx.device),
            "master_weights": "float32", "eval_dtype": ctx.eval_dtype}


def _eval_key(ctx: Context, **extra: Any) -> dict[str, Any]:
    """How dev sets are chosen and evaluated: part of every key that evaluates."""
    e = ctx.spec.eval
    return {"dev_selection": DEV_SELECTION, "dev_cap": e.dev_cap, "test": e.test, **extra}


def encode_tasks(ctx: Context, tokenizer: Any, tasks: Sequence[Task]) -> dict[str, TrainSet]:
    renderer = PromptRenderer(tokenizer, ctx.catalogue.truncation)
    out = {}
    for t in tasks:
        out[t.name] = encode_task(renderer, t, ctx.train_examples(t.name), max_seq_len=ctx.spec.max_seq_len, multilabel=ctx.spec.training.multilabel)
        if out[t.name].dropped:
            ctx.emit({"event": "dropped", "task": t.name, "reasons": out[t.name].dropped})
    return out


def _versions() -> dict[str, str]:
    import transformers

    import mtserve

    return {"torch": torch.__version__, "transformers": transformers.__version__, "mtserve": getattr(mtserve, "__version__", "")}


# -- runs ---------------------------------------------------------------------------------


@dataclass
class RunContext:
    run_id: str
    key: str
    payload: dict[str, Any]
    action: str  # cached | start | resume
    emit: EventLog

    @property
    def folder_name(self) -> str:
        return self.run_id


def _open_run(ctx: Context, kind: str, label: str, payload: dict[str, Any]) -> RunContext:
    key = run_key(payload)
    run_id = f"{kind}-{label}-{key[:12]}"
    action = ctx.store.prepare(run_id, payload, resume=ctx.resume, restart=ctx.restart) if ctx.dist.main else "start"
    if ctx.dist.world > 1:  # rank 0 decides; a tensor, not a pickled object
        import torch.distributed as dist

        actions = ["cached", "start", "resume"]
        code = torch.tensor([actions.index(action)], device=ctx.device)
        dist.broadcast(code, src=0)
        action = actions[int(code.item())]
    path = ctx.store.dir(run_id) / EVENTS if ctx.dist.main else None
    return RunContext(run_id, key, payload, action, ctx.emit.child(path, run=run_id, kind=kind))


def _base_ref(base_dir: Path) -> dict[str, str]:
    return ck.base_identity(base_dir)


def run_stage0(ctx: Context, base_dir: Path) -> Path:
    """Domain continual pre-training: a full checkpoint, the base of what follows."""
    s0 = ctx.spec.stage0
    assert s0 is not None
    corpus = ctx.spec.path(s0.corpus)
    if not corpus.is_file():
        raise ValidationError("stage0.corpus", "no such file", str(corpus))
    blocks = read_corpus_blocks(ctx.tokenizer(base_dir), corpus, ctx.spec.max_seq_len)
    steps = min(s0.steps or steps_for(s0.epochs, len(blocks), ctx.per_step), ctx.spec.max_steps)
    lr = s0.lr or ctx.lr
    payload = {
        "kind": "stage0", "base": _base_ref(base_dir), "corpus_sha256": ck_sha(corpus), "steps": steps, "lr": lr,
        "world": ctx.dist.world, **_hyper(ctx),
    }
    rc = _open_run(ctx, "stage0", "corpus", payload)
    checkpoint_id = f"stage0-{rc.key[:12]}"
    if rc.action == "cached":
        rc.emit({"event": "run_cached"})
        here = checkpoint_dir(ctx.checkpoints_root, checkpoint_id)
        return here if (here / "manifest.json").exists() else Path(ctx.store.result(rc.run_id)["checkpoint"]["path"])  # type: ignore[index]
    with _maybe_lock(ctx, rc.run_id):
        model, tokenizer = load_model(ctx, base_dir, lora=ctx.spec.finetune == "lora")
        plan = [StagePlan("stage0", {"corpus": 1.0}, steps, lr, strategy="causal_lm")]
        rc.emit({"event": "run_started", "action": rc.action, "stages": [p.to_dict() for p in plan], "blocks": len(blocks)})
        trainer = Trainer(model, tokenizer, loop_settings(ctx.spec), ctx.store.dir(rc.run_id), emit=rc.emit, dist=ctx.dist)
        outcome = trainer.run(plan, {"corpus": blocks}, resume=rc.action == "resume")
        path = checkpoint_dir(ctx.checkpoints_root, checkpoint_id)
        if ctx.dist.main:
            full = unwrap(model.merge_and_unload()) if hasattr(model, "merge_and_unload") else model
            path = ck.write_checkpoint(
                ctx.checkpoints_root, checkpoint_id, full, tokenizer, base_dir=base_dir, lora=False, tasks=[],
                metrics={}, training={"method": "stage0", "run_id": rc.run_id, "run_key": rc.key, "corpus": str(corpus),
                                      "corpus_sha256": payload["corpus_sha256"], "blocks": len(blocks), "stages": outcome.stages,
                                      "steps": outcome.steps, "tokens": outcome.tokens, "seconds": outcome.seconds, **_hyper(ctx),
                                      "precision": _precision_record(ctx), "versions": _versions()},
                description="domain continual pre-training (stage 0)",
            )
            _finalize(ctx, rc, {"kind": "stage0", "run_id": rc.run_id, "checkpoint": {"id": checkpoint_id, "path": str(path)},
                                               "steps": outcome.steps, "tokens": outcome.tokens, "seconds": outcome.seconds})
            rc.emit({"event": "run_finished", "checkpoint": str(path)})
        barrier(ctx.dist)
    return path


def _finalize(ctx: Context, rc: RunContext, result: Mapping[str, Any]) -> None:
    """Write the result (the run is finished), then drop what only a resume
    needed: the training state and the best-weight snapshots (a full model's
    state is three times its size)."""
    import shutil

    ctx.store.write_result(rc.run_id, result)
    folder = ctx.store.dir(rc.run_id)
    ck.clear_train_state(folder)
    shutil.rmtree(folder / "best", ignore_errors=True)
    _write_curves(folder)


def _write_curves(folder: Path) -> None:
    """TensorBoard event files of a run, from its events (`tensorboard --logdir
    <runs_dir>`); a missing optional extra or a plotting failure never fails a run."""
    from trainer.curves import write_tensorboard
    from trainer.runs import read_events

    try:
        write_tensorboard(read_events(folder / EVENTS), folder / "tensorboard")
    except Exception as exc:  # noqa: BLE001 - the run's result is written already; curves are a view of it
        log.warning("could not write TensorBoard files for %s: %s", folder.name, exc)


def ck_sha(path: Path) -> str:
    from mtserve.checkpoints import sha256_file

    return sha256_file(path)


class _maybe_lock:
    """The run lock on rank 0 (other ranks never write the run folder)."""

    def __init__(self, ctx: Context, run_id: str):
        self.cm = ctx.store.lock(run_id) if ctx.dist.main else None

    def __enter__(self) -> None:
        if self.cm is not None:
            self.cm.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.cm is not None:
            self.cm.__exit__(exc_type, exc, tb)


def run_single_task(ctx: Context, base_dir: Path, task: Task) -> dict[str, Any]:
    """One task's baseline: the same loop with one task, evaluated on dev before
    the first update (zero-shot) and every eval.every_steps steps; the best
    evaluation is kept, which may be the untuned base model.

    The run key holds the resolved plan (step count, lr, evaluation period,
    patience), not the settings that led to it: `baselines.epochs: 2` and the
    equal `baselines.steps` share a run, and a job's `max_steps` that does not
    bind changes nothing."""
    data = encode_tasks(ctx, ctx.tokenizer(base_dir), [task])
    steps, notes = baseline_steps(ctx.spec, len(data[task.name]), ctx.per_step)
    plan = [StagePlan("single", {task.name: 1.0}, steps, ctx.lr, strategy="single_task",
                      eval_every=ctx.spec.eval.every_steps, eval_at_start=True, eval_at_end=True, select_best=True,
                      patience=ctx.spec.eval.patience)]
    payload = {
        "kind": "single_task", "task": task.to_dict(), "data": ctx.data_identity(task.name), "base": _base_ref(base_dir),
        "max_train_examples": ctx.spec.max_train_examples, "stages": [p.to_dict() for p in plan], "eval": _eval_key(ctx),
        "world": ctx.dist.world, **_hyper(ctx),
    }
    rc = _open_run(ctx, "st", task.name, payload)
    if rc.action == "cached":
        rc.emit({"event": "run_cached"})
        return ctx.store.result(rc.run_id)  # type: ignore[return-value]
    lora = ctx.spec.finetune == "lora"
    with _maybe_lock(ctx, rc.run_id):
        model, tokenizer = load_model(ctx, base_dir, lora=lora)
        rc.emit({"event": "run_started", "action": rc.action, "tasks": [task.name], "stages": [p.to_dict() for p in plan], "notes": notes})
        evaluator = make_evaluator(ctx, tokenizer, [task], None, rc.run_id, rc.emit)
        trainer = Trainer(model, tokenizer, loop_settings(ctx.spec), ctx.store.dir(rc.run_id), emit=rc.emit, evaluator=evaluator, dist=ctx.dist)
        outcome = trainer.run(plan, data, resume=rc.action == "resume")
        result: dict[str, Any] = {}
        if ctx.dist.main:
            result = _finish_single(ctx, rc, base_dir, task, model, tokenizer, outcome, data, notes)
        barrier(ctx.dist)
    return result if ctx.dist.main else ctx.store.result(rc.run_id)  # type: ignore[return-value]


def _trivial_estimate(trivial: Trivial) -> dict[str, Any] | None:
    if trivial.eval is None:
        return None
    return {"rule": trivial.rule, "answer": trivial.to_dict()["answer"], **_estimate(trivial.eval)}


def _load_eval(ctx: Context, rc: RunContext, entry: Mapping[str, Any], task: str) -> TaskEval:
    return TaskEval.from_dict(ck.read_json(ctx.store.dir(rc.run_id) / "evals" / entry["file"])[task])


def _finish_single(ctx: Context, rc: RunContext, base_dir: Path, task: Task, model: Any, tokenizer: Any, outcome: Any, data: Mapping[str, TrainSet], notes: dict) -> dict[str, Any]:
    best = outcome.best
    zero = _load_eval(ctx, rc, outcome.history[0], task.name)
    chosen = _load_eval(ctx, rc, best, task.name)
    zero_shot = best["weights"] == "base"
    history = [{"step": h["step"], "epochs": h["epochs"][task.name], "value": h["summary"]["values"][task.name]} for h in outcome.history]
    sat = saturation(history, ctx.spec.resources.saturation_epochs)
    selected = {"step": best["step"], "epochs": best["epochs"][task.name], "zero_shot": zero_shot,
                "label": "zero-shot (the untuned base model beat every fine-tuned step on dev)" if zero_shot
                else f"fine-tuned, step {best['step']} ({best['epochs'][task.name]:.2f} epochs)"}
    trivial = trivial_baseline(task, ctx.train_examples(task.name), ctx.dev_examples(task.name))
    degenerate = is_degenerate(chosen, trivial)
    if degenerate:
        rc.emit({"event": "degenerate_baseline", "task": task.name, "baseline": chosen.value.value, "trivial": trivial.value,
                 "rule": trivial.rule})
    metrics = {"split": "dev", "dev": {task.name: _estimate(chosen)}, "zero_shot": {task.name: _estimate(zero)}, "selected": selected,
               "trivial": {task.name: _trivial_estimate(trivial)}, "degenerate": {task.name: degenerate},
               "dev_selection": {task.name: ctx.dev_selection(task.name).to_dict()}, "eval_dtype": ctx.eval_dtype}
    training = {
        "method": "single_task", "run_id": rc.run_id, "run_key": rc.key, "stages": outcome.stages, "history": history,
        "saturation": sat.to_dict(), "steps": outcome.steps, "tokens": outcome.tokens, "seconds": outcome.seconds, "notes": notes,
        "data": {task.name: _data_record(ctx, task.name, data)}, **_hyper(ctx), "precision": _precision_record(ctx),
        "versions": _versions(),
    }
    checkpoint: dict[str, Any]
    if zero_shot:
        # Honest: the baseline is the base checkpoint itself; no copy is written.
        checkpoint = {"id": read_manifest(base_dir).id, "path": str(base_dir), "zero_shot": True}
    else:
        checkpoint_id = f"st-{task.name}-{rc.key[:12]}"
        path = ck.write_checkpoint(
            ctx.checkpoints_root, checkpoint_id, model, tokenizer, base_dir=base_dir, lora=ctx.spec.finetune == "lora",
            tasks=task_records([task]), metrics=metrics, training=training,
            description=f"single-task baseline for {task.name}: best dev step {best['step']}",
        )
        checkpoint = {"id": checkpoint_id, "path": str(path), "zero_shot": False}
    test = None
    if ctx.spec.eval.test:
        if zero_shot:
            model, tokenizer = load_model(ctx, base_dir, lora=False)
        test = score_dev(ctx, model, tokenizer, [task], split="test", label=checkpoint["id"])[task.name].to_dict()
    result = {
        "kind": "single_task", "run_id": rc.run_id, "key": rc.key, "task": task.name, "checkpoint": checkpoint, "base": _base_ref(base_dir),
        "selected": selected, "dev": chosen.to_dict(), "zero_shot": zero.to_dict(), "test": test, "history": history,
        "saturation": sat.to_dict(), "steps": outcome.steps, "tokens": outcome.tokens, "seconds": outcome.seconds,
        "trivial": trivial.to_dict(), "degenerate": degenerate, "dev_selection": ctx.dev_selection(task.name).to_dict(),
        "precision": _precision_record(ctx), "stopped_early": (outcome.stages[-1] if outcome.stages else {}).get("stopped_early"),
    }
    _finalize(ctx, rc, result)
    rc.emit({"event": "run_finished", "checkpoint": checkpoint["path"], "selected": selected,
             "dev": chosen.value.value, "zero_shot": zero.value.value})
    return result


def _data_record(ctx: Context, task: str, data: Mapping[str, TrainSet]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, sd in ctx.data[task].items():
        out[split] = {"sha256": sd.sha256, "examples": len(sd.examples), "bad_lines": len(sd.bad_lines), "file": str(sd.path)}
    out["train"]["used"] = len(ctx.train_examples(task))
    if task in data and data[task].dropped:
        out["train"]["dropped"] = data[task].dropped
    out["dev"]["evaluated"] = len(ctx.dev_examples(task))
    return out


def run_multi_task(
    ctx: Context, base_dir: Path, group: str, tasks: Sequence[Task], baselines: Mapping[str, dict[str, Any]], high: Sequence[str]
) -> dict[str, Any]:
    """One model for a group of tasks: the method's stages, evaluated on every
    task's dev set and qualified against the baselines. Keyed on the resolved
    stages (rates, step counts, lr), so equivalent spellings of the mixture
    settings share a run."""
    spec = ctx.spec
    data = encode_tasks(ctx, ctx.tokenizer(base_dir), tasks)
    sizes = {t.name: len(data[t.name]) for t in tasks}
    stages, notes = plan_stages(spec, spec.method, sizes, high, ctx.per_step, lr=ctx.lr)
    payload = {
        "kind": "multi_task", "name": spec.name, "group": group, "method": spec.method, "tasks": [t.to_dict() for t in tasks],
        "data": {t.name: ctx.data_identity(t.name) for t in tasks}, "base": _base_ref(base_dir),
        "stages": [p.to_dict() for p in stages], "max_train_examples": spec.max_train_examples,
        "eval": _eval_key(ctx, multitask_every_steps=spec.eval.multitask_every_steps),
        "baselines": {t: b["run_id"] for t, b in sorted(baselines.items())}, "world": ctx.dist.world, **_hyper(ctx),
    }
    rc = _open_run(ctx, "mt", f"{spec.name}-{group}", payload)
    if rc.action == "cached":
        rc.emit({"event": "run_cached"})
        return ctx.store.result(rc.run_id)  # type: ignore[return-value]
    base_evals = {t: TaskEval.from_dict(b["dev"]) for t, b in baselines.items()}
    with _maybe_lock(ctx, rc.run_id):
        model, tokenizer = load_model(ctx, base_dir, lora=spec.finetune == "lora")
        rc.emit({"event": "run_started", "action": rc.action, "group": group, "tasks": [t.name for t in tasks],
                 "stages": [p.to_dict() for p in stages], "notes": notes, "high": list(high)})
        evaluator = make_evaluator(ctx, tokenizer, tasks, base_evals, rc.run_id, rc.emit)
        trainer = Trainer(model, tokenizer, loop_settings(spec), ctx.store.dir(rc.run_id), emit=rc.emit, evaluator=evaluator, dist=ctx.dist)
        outcome = trainer.run(stages, data, resume=rc.action == "resume")
        result: dict[str, Any] = {}
        if ctx.dist.main:
            result = _finish_multi(ctx, rc, base_dir, group, tasks, model, tokenizer, outcome, data, baselines, base_evals, high, notes)
        barrier(ctx.dist)
    return result if ctx.dist.main else ctx.store.result(rc.run_id)  # type: ignore[return-value]


def _finish_multi(
    ctx: Context, rc: RunContext, base_dir: Path, group: str, tasks: Sequence[Task], model: Any, tokenizer: Any, outcome: Any,
    data: Mapping[str, TrainSet], baselines: Mapping[str, dict[str, Any]], base_evals: Mapping[str, TaskEval], high: Sequence[str], notes: dict,
) -> dict[str, Any]:
    spec = ctx.spec
    best = outcome.best
    payload = ck.read_json(ctx.store.dir(rc.run_id) / "evals" / best["file"])
    evals = {t.name: TaskEval.from_dict(payload[t.name]) for t in tasks}
    quals: dict[str, Qualification] = {
        n: qualify(ev, base_evals[n], degenerate_baseline=bool(baselines[n].get("degenerate"))) for n, ev in evals.items() if n in base_evals
    }
    qualified = sorted(n for n, q in quals.items() if q.qualified)
    metrics = {
        "split": "dev",
        "dev": {n: _estimate(ev) for n, ev in evals.items()},
        "baseline": {n: {"run": b["run_id"], "checkpoint": b["checkpoint"]["id"], "selected": b["selected"]["label"],
                         **_estimate(TaskEval.from_dict(b["dev"]))} for n, b in baselines.items()},
        "zero_shot": {n: _estimate(TaskEval.from_dict(b["zero_shot"])) for n, b in baselines.items()},
        "qualification": {n: q.to_dict() for n, q in quals.items()},
        "qualified": qualified,
        "selected": {"stage": best["stage"], "step": best["step"]},
        "trivial": {t.name: _trivial_estimate(trivial_baseline(t, ctx.train_examples(t.name), ctx.dev_examples(t.name))) for t in tasks},
        "dev_selection": {t.name: ctx.dev_selection(t.name).to_dict() for t in tasks},
        "eval_dtype": ctx.eval_dtype,
    }
    training = {
        "method": spec.method, "group": group, "job": spec.name, "run_id": rc.run_id, "run_key": rc.key, "stages": outcome.stages,
        "high_resource": sorted(high), "mixture": spec.mixture.model_dump(mode="json"), "notes": notes,
        "steps": outcome.steps, "tokens": outcome.tokens, "seconds": outcome.seconds,
        "data": {t.name: _data_record(ctx, t.name, data) for t in tasks}, **_hyper(ctx), "precision": _precision_record(ctx),
        "versions": _versions(),
        "history": [{"stage": h["stage"], "step": h["step"], "summary": h.get("summary")} for h in outcome.history],
    }
    checkpoint_id = f"{spec.name}-{group}-{rc.key[:12]}"
    path = ck.write_checkpoint(
        ctx.checkpoints_root, checkpoint_id, model, tokenizer, base_dir=base_dir, lora=spec.finetune == "lora",
        tasks=task_records(tasks), metrics=metrics, training=training,
        description=f"{spec.method} multi-task model for group {group} of job {spec.name}: {len(qualified)}/{len(tasks)} tasks qualified",
    )
    test = None
    if spec.eval.test:
        test = {n: ev.to_dict() for n, ev in score_dev(ctx, model, tokenizer, tasks, split="test", label=checkpoint_id).items()}
    result = {
        "kind": "multi_task", "run_id": rc.run_id, "key": rc.key, "group": group, "method": spec.method, "tasks": [t.name for t in tasks],
        "job": spec.name, "base": _base_ref(base_dir),
        "checkpoint": {"id": checkpoint_id, "path": str(path)}, "dev": {n: ev.to_dict() for n, ev in evals.items()},
        "qualification": {n: q.to_dict() for n, q in quals.items()}, "qualified": qualified, "test": test, "high": sorted(high),
        "stages": outcome.stages, "steps": outcome.steps, "tokens": outcome.tokens, "seconds": outcome.seconds,
        "selected": metrics["selected"], "precision": _precision_record(ctx),
        "history": [{"stage": h["stage"], "step": h["step"], "epochs": h["epochs"], "values": (h.get("summary") or {}).get("values")}
                    for h in outcome.history],
    }
    _finalize(ctx, rc, result)
    rc.emit({"event": "run_finished", "checkpoint": str(path), "qualified": qualified,
             "dev": {n: ev.value.value for n, ev in evals.items()}})
    return result


# -- the job --------------------------------------------------------------------------------


@dataclass
class JobResult:
    job: str
    method: str
    rows: list[dict[str, Any]]  # per task: zero-shot, baseline, multi-task, ratio, qualified, checkpoints
    groups: list[dict[str, Any]]  # per model: group, tasks, checkpoint, qualified
    checkpoints: list[str]
    overhead: float | None
    num_qualified: int
    runs: list[str]
    bad_lines: list[str]
    seconds: float
    table_markdown: str = ""
    report_files: dict[str, str] = field(default_factory=dict)  # the job report (markdown) and its plots

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_job(
    spec: JobSpec,
    *,
    settings: Settings | None = None,
    emit: Emit | None = None,
    resume: bool = False,
    restart: bool = False,
) -> JobResult:
    """Run a whole job: stage 0, baselines, grouping, multi-task runs,
    qualification. Every piece is a cached run; `resume` continues interrupted
    runs, `restart` discards their state."""
    started = time.monotonic()
    job_log_path = spec.runs_path / f"job-{spec.name}.events.jsonl"
    job_emit = EventLog(job_log_path if _is_main() else None, emit, job=spec.name)
    job_emit({"event": "job_started", "spec": spec.to_dict()})
    try:
        ctx = build_context(spec, settings=settings, emit=job_emit, resume=resume, restart=restart)
        base_dir = ctx.base_dir
        if spec.stage0 is not None:
            base_dir = run_stage0(ctx, base_dir)
        baselines: dict[str, dict[str, Any]] = {}
        if spec.baselines.train or spec.method == "single_task":
            for task in ctx.tasks:
                baselines[task.name] = run_single_task(ctx, base_dir, task)
        high = _high_resource(ctx, baselines)
        groups_out: list[dict[str, Any]] = []
        if spec.method != "single_task":
            for group, tasks in group_tasks(ctx.tasks, spec.task_filter.group_by).items():
                groups_out.append(_run_group(ctx, base_dir, group, tasks, baselines, high))
        result = _job_result(ctx, baselines, groups_out, time.monotonic() - started)
        if _is_main():
            result.report_files = write_job_report(ctx, result, baselines, groups_out)
            ck.write_json(spec.runs_path / f"job-{spec.name}.result.json", result.to_dict())
        job_emit({"event": "job_finished", "checkpoints": result.checkpoints, "num_qualified": result.num_qualified,
                  "overhead": result.overhead, "seconds": result.seconds})
        return result
    except Exception as exc:
        job_emit({"event": "job_failed", "error": f"{type(exc).__name__}: {exc}"})
        raise


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _high_resource(ctx: Context, baselines: Mapping[str, dict[str, Any]]) -> list[str]:
    spec = ctx.spec
    if spec.method != "two_stage":
        return []
    if spec.resources.high is not None:
        ctx.emit({"event": "resources", "high": list(spec.resources.high), "source": "job spec"})
        return list(spec.resources.high)
    high = []
    detail = {}
    for name, b in baselines.items():
        sat = saturation(b["history"], spec.resources.saturation_epochs)
        detail[name] = sat.to_dict()
        if sat.high:
            high.append(name)
    ctx.emit({"event": "resources", "high": high, "source": "baseline saturation", "detail": detail})
    return high


def _run_group(ctx: Context, base_dir: Path, group: str, tasks: Sequence[Task], baselines: Mapping[str, dict[str, Any]], high: Sequence[str]) -> dict[str, Any]:
    names = [t.name for t in tasks]
    if len(tasks) == 1 and names[0] in baselines:
        # A group of one task is its single-task model: training it again would
        # only reproduce the baseline at the cost of a run.
        b = baselines[names[0]]
        ctx.emit({"event": "group_reuses_baseline", "group": group, "task": names[0], "checkpoint": b["checkpoint"]["id"]})
        return {"group": group, "tasks": names, "checkpoint": b["checkpoint"], "qualified": names, "run_id": b["run_id"],
                "reused_baseline": True, "dev": {names[0]: b["dev"]}, "qualification": {}}
    mine = {n: b for n, b in baselines.items() if n in names}
    result = run_multi_task(ctx, base_dir, group, tasks, mine, [h for h in high if h in names])
    return {"group": group, "tasks": names, "checkpoint": result["checkpoint"], "qualified": result["qualified"], "run_id": result["run_id"],
            "reused_baseline": False, "dev": result["dev"], "qualification": result["qualification"]}


def _job_result(ctx: Context, baselines: Mapping[str, dict[str, Any]], groups: Sequence[dict[str, Any]], seconds: float) -> JobResult:
    spec = ctx.spec
    rows = []
    group_of = {t: g for g in groups for t in g["tasks"]}
    for task in ctx.tasks:
        b = baselines.get(task.name)
        g = group_of.get(task.name)
        row: dict[str, Any] = {"task": task.name, "metric": None, "zero_shot": None, "baseline": None, "baseline_checkpoint": None,
                               "baseline_selected": None, "multi_task": None, "ratio": None, "ratio_low": None, "ratio_high": None,
                               "qualified": None, "verdict": None, "group": g["group"] if g else None,
                               "trivial": None, "degenerate_baseline": None, "routes_on_promote": False,
                               "dev_warnings": list(ctx.dev_selection(task.name).warnings),
                               # the definition trained and evaluated: promotion compares it with the registry's
                               "task_version": task.version, "definition_hash": task.content_hash(),
                               "checkpoint": g["checkpoint"]["id"] if g else (b["checkpoint"]["id"] if b else None)}
        # The trivial baseline stands beside every task, with or without a trained baseline.
        trivial = Trivial.from_dict(b["trivial"]) if b and b.get("trivial") else trivial_baseline(
            task, ctx.train_examples(task.name), ctx.dev_examples(task.name))
        row["trivial"] = _trivial_estimate(trivial)
        if b is not None:
            dev = TaskEval.from_dict(b["dev"])
            row.update(metric=dev.primary, zero_shot=_estimate(TaskEval.from_dict(b["zero_shot"])), baseline=_estimate(dev),
                       baseline_checkpoint=b["checkpoint"]["id"], baseline_selected=b["selected"]["label"],
                       degenerate_baseline=is_degenerate(dev, trivial))
        if g is not None:
            ev = TaskEval.from_dict(g["dev"][task.name])
            row.update(metric=ev.primary, multi_task=_estimate(ev))
            q = g["qualification"].get(task.name)
            if q is not None:
                qual = Qualification.from_dict(q)
                row.update(ratio=q["ratio"], ratio_low=q["ratio_low"], ratio_high=q["ratio_high"], qualified=q["qualified"], verdict=qual.label)
            elif g.get("reused_baseline"):
                row.update(ratio=1.0, qualified=True, verdict="single-task model")
        # What `--promote` does with the row (trainer.promote routes the point rule's qualified tasks).
        row["routes_on_promote"] = bool(row["qualified"]) if spec.method != "single_task" else b is not None
        rows.append(row)
    if spec.method == "single_task":
        models = [[t] for t in baselines]
        checkpoints = [b["checkpoint"]["path"] for b in baselines.values()]
    else:
        models = [g["qualified"] for g in groups]
        checkpoints = [g["checkpoint"]["path"] for g in groups]
    qualified = sorted({t for m in models for t in m})
    return JobResult(
        job=spec.name, method=spec.method, rows=rows, groups=[{k: v for k, v in g.items() if k not in ("dev", "qualification")} for g in groups],
        checkpoints=checkpoints, overhead=overhead(models), num_qualified=len(qualified),
        runs=[b["run_id"] for b in baselines.values()] + [g["run_id"] for g in groups if not g.get("reused_baseline")],
        bad_lines=ctx.bad_lines[:1000], seconds=seconds, table_markdown=_table(ctx, baselines, groups),
    )


def write_job_report(
    ctx: Context, result: JobResult, baselines: Mapping[str, dict[str, Any]], groups: Sequence[dict[str, Any]]
) -> dict[str, str]:
    """`<runs_dir>/job-<name>.report/`: report.md (the result table and one dev
    curve per task) and a PNG per task: the single-task baseline's dev metric
    over its steps, the multi-task model's, and dashed lines for the selected
    baseline, the trivial baseline and zero-shot, so a reader sees learning
    instead of inferring it. Plots need the `curves` extra; without it the
    report still has its table."""
    from trainer.curves import plot_task_curve

    folder = ctx.spec.runs_path / f"job-{ctx.spec.name}.report"
    folder.mkdir(parents=True, exist_ok=True)
    group_of = {t: g for g in groups for t in g["tasks"]}
    files: dict[str, str] = {}
    lines = [f"# Job report: {ctx.spec.name}", "", result.table_markdown or "", ""]
    for row in result.rows:
        name = row["task"]
        curves: dict[str, list[tuple[int, float]]] = {}
        b = baselines.get(name)
        if b is not None:
            curves["single-task"] = [(int(h["step"]), float(h["value"])) for h in b.get("history", [])]
        g = group_of.get(name)
        if g is not None and not g.get("reused_baseline"):
            mt = ctx.store.result(g["run_id"]) or {}
            offsets, total = {}, 0
            for st in mt.get("stages", []):  # each stage counts its steps from 0: place them end to end
                offsets[st["name"]] = total
                total += int(st.get("steps_done", 0))
            curves[f"multi-task ({ctx.spec.method})"] = [
                (offsets.get(h["stage"], 0) + int(h["step"]), float(h["values"][name]))
                for h in mt.get("history", []) if (h.get("values") or {}).get(name) is not None
            ]
        levels = {"baseline": (row["baseline"] or {}).get("value"), "trivial": (row.get("trivial") or {}).get("value"),
                  "zero-shot": (row["zero_shot"] or {}).get("value")}
        try:
            path = plot_task_curve(folder / f"{name}.png", name, row["metric"] or "", curves, lines=levels,
                                   title=f"{name}: dev {row['metric']} ({ctx.spec.name})")
        except Exception as exc:  # noqa: BLE001 - a plot is a view of the result, never its cause of failure
            log.warning("could not plot %s: %s", name, exc)
            path = None
        verdict = row.get("verdict") or ("degenerate baseline" if row.get("degenerate_baseline") else "-")
        lines.append(f"## {name}: {verdict}")
        lines.append("")
        if path is not None:
            files[name] = str(path)
            lines += [f"![{name} dev curve]({path.name})", ""]
        for warning in row.get("dev_warnings") or []:
            lines += [f"- warning: {warning}"]
        lines.append("")
    report = folder / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    files["report"] = str(report)
    return files


def _table(ctx: Context, baselines: Mapping[str, dict[str, Any]], groups: Sequence[dict[str, Any]]) -> str:
    """The paper-style Table 1 rows of this job (zero-shot, single-task, the method)."""
    from trainer.report import RunResult, build_table1

    runs = []
    if baselines:
        runs.append(RunResult("zero_shot", "base", {n: TaskEval.from_dict(b["zero_shot"]) for n, b in baselines.items()}))
        for n, b in baselines.items():
            runs.append(RunResult("single_task", n, {n: TaskEval.from_dict(b["dev"])}, checkpoint=b["checkpoint"]["id"]))
    if ctx.spec.method != "single_task":
        for g in groups:
            runs.append(RunResult(ctx.spec.method, g["group"], {n: TaskEval.from_dict(v) for n, v in g["dev"].items()}, checkpoint=g["checkpoint"]["id"]))
    if not runs:
        return ""
    try:
        return build_table1(runs, title=f"Job {ctx.spec.name}: {ctx.spec.method} (dev)").to_markdown()
    except Exception as exc:  # noqa: BLE001 - the table is a convenience; the rows above are the result
        log.warning("could not build the table: %s", exc)
        return ""


__all__ = [
    "Context",
    "JobResult",
    "Saturation",
    "baseline_steps",
    "build_context",
    "group_tasks",
    "plan_stages",
    "run_job",
    "saturation",
    "steps_for",
]
