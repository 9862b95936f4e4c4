"""The training loop: answer-only loss, length-grouped dynamic padding,
gradient accumulation, AdamW with linear warmup and decay, periodic dev
evaluation with the best weights kept, and a resumable state.

Examples are rendered once with the one prompt renderer
(`PromptRenderer.render_training`), so training sees exactly the token
segments serving scores: the prefix (the input) and the suffix (the task's
instruction and answer cue) carry no loss (labels -100), the answer (the
verbalizer or target plus the end-of-answer token) does.

Loss: each example's mean token cross-entropy over its answer tokens, averaged
over the examples of the optimizer step (all micro-batches and, under DDP, all
ranks). Averaging per example rather than per token keeps a task's share of the
gradient equal to its sampling rate: a generation target of 30 tokens would
otherwise weigh 10x a 3-token label. Stage 0 (causal LM on a corpus) uses the
same rule with every token of a block as "answer".

Batches: the sampler's draws for `length_group_steps` optimizer steps (a
"window") are sorted by length and cut into micro-batches, whose order is then
shuffled with a seeded generator, so padding is small and steps still mix
lengths. Everything is a function of (seed, stage, window index): a resumed run
redraws the same window from the sampler state saved at its start.

Schedule (per stage, with a fresh AdamW): linear warmup over
ceil(warmup_ratio x steps) steps, lr(s) = lr x (s+1)/W, then linear decay
lr(s) = lr x (S - s)/(S - W) for s >= W, reaching lr/(S-W) at the last step
(never an update at lr 0). Gradients are clipped to `max_grad_norm`.
Weight decay (default 0) skips biases and norm weights.

Precision: weights and optimizer state in float32; bf16 autocast where the
device has bf16 matrix units (a CUDA GPU that supports it, a CPU with AMX-BF16:
`mtserve.precision`, precision auto), or wherever bf16 is asked for. Determinism:
torch is seeded per stage, the sampler is seeded, the loop uses no
nondeterministic CPU ops, and `torch.use_deterministic_algorithms` is on while
training (on CUDA also set CUBLAS_WORKSPACE_CONFIG=:4096:8, see docs/training.md).

Data parallel: under torchrun (WORLD_SIZE > 1) the global batch stays that of
one process (micro_batch x grad_accum examples a step): every rank draws the
same window and takes the step's micro-batches j with j % world == rank, so
each rank runs grad_accum / world of them (grad_accum must be a multiple of
the world size; DistributedSampler's rank::world split, applied to the
step's micro-batches). The model is wrapped in DDP (gradients averaged, the loss pre-scaled
by the world size so the average is the per-example mean above), so a step's
update is the one-process update up to the order of float sums. The logged
loss and token counts are summed over ranks. Rank 0 keeps the one-process
generator stream; the other ranks reseed theirs every step from (stage seed,
step, rank), so dropout masks differ between ranks and a resumed run (which
restores rank 0's saved generator) draws the same masks. Rank 0 evaluates and
writes states and checkpoints; the others wait for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mtserve.errors import MtserveError, ValidationError
from mtserve.precision import autocast_dtype, resolve_precision
from mtserve.prompt import PromptRenderer, Segments
from mtserve.tasks import Task, Taxonomy, TruncationBudget, TruncationPolicy
from trainer.sampling import MixtureSampler, _shuffled

if TYPE_CHECKING:
    from trainer.checkpoint import TrainState

Emit = Callable[[dict[str, Any]], None]

# Causal-LM classes whose forward is `lm_head(decoder(...).last_hidden_state)`
# with nothing in between (no logit scaling or soft-capping): for them the loss
# runs the LM head on answer positions only, which saves about a quarter of the
# compute of a small model with a large vocabulary. Others use the full forward.
_PLAIN_HEAD_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "phi3", "smollm3"})


# -- features -----------------------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    """One training sequence: token ids, of which the first `n_prompt` carry no loss."""

    task: str
    ids: tuple[int, ...]
    n_prompt: int

    @property
    def n_answer(self) -> int:
        return len(self.ids) - max(self.n_prompt, 1)


@dataclass
class TrainSet:
    """A task's training examples, rendered. `items[i]` holds the features of
    example i: one, or (multi-label, sample_one) one per label question."""

    task: str
    items: list[tuple[Feature, ...]]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count (never silent)

    def __len__(self) -> int:
        return len(self.items)

    def pick(self, index: int, draw: int, seed: int) -> Feature:
        """The feature trained for draw number `draw` of example `index`: a
        multi-label example asks one of its label questions, chosen by a hash
        so that the same draw always asks the same one."""
        feats = self.items[index]
        if len(feats) == 1:
            return feats[0]
        h = hashlib.sha256(f"{seed}/{self.task}/{index}/{draw}".encode()).digest()
        return feats[int.from_bytes(h[:8], "big") % len(feats)]


def _fit(renderer: PromptRenderer, task: Task, example: Any, max_seq_len: int, cache: dict) -> list[Segments] | None:
    """The example's segments within max_seq_len: rendered normally, and if too
    long, re-rendered with a smaller input budget (the renderer's own cut, with
    its marker) until it fits. None when even a minimal input does not fit."""
    segs = renderer.render_training(task, example.input, example.gold)
    longest = max(len(s.ids) for s in segs)
    if longest <= max_seq_len:
        return segs
    inp = example.input
    channel = getattr(inp, "channel", None)
    base = renderer.policy.budget_for(inp.kind, channel)
    content = renderer.render_input(inp).content_tokens
    budget = content - (longest - max_seq_len) - 8
    for _ in range(4):
        if budget < 16:
            return None
        key = (inp.kind, channel, budget)
        if key not in cache:
            policy = TruncationPolicy((TruncationBudget(inp.kind, channel, budget, base.keep_first_turns),))
            cache[key] = PromptRenderer(renderer.tokenizer, policy, renderer.system_prompt, style=renderer.style)
        segs = cache[key].render_training(task, inp, example.gold)
        longest = max(len(s.ids) for s in segs)
        if longest <= max_seq_len:
            return segs
        budget -= (longest - max_seq_len) + 8
    return None


def encode_task(
    renderer: PromptRenderer, task: Task, examples: Sequence[Any], *, max_seq_len: int, multilabel: str = "sample_one"
) -> TrainSet:
    """Render a task's training examples once (the renderer's segments)."""
    items: list[tuple[Feature, ...]] = []
    dropped: dict[str, int] = {}
    cache: dict = {}
    for ex in examples:
        try:
            segs = _fit(renderer, task, ex, max_seq_len, cache)
        except MtserveError:
            dropped["render_error"] = dropped.get("render_error", 0) + 1
            continue
        if segs is None:
            dropped["too_long"] = dropped.get("too_long", 0) + 1
            continue
        feats = tuple(Feature(task.name, s.ids, len(s.prefix) + len(s.suffix)) for s in segs)
        if task.taxonomy is Taxonomy.MULTILABEL and multilabel == "expand":
            items.extend((f,) for f in feats)
        else:
            items.append(feats)
    if not items:
        raise ValidationError(
            f"data({task.name})", f"no training example fits max_seq_len {max_seq_len} (dropped: {dropped})", len(examples)
        )
    return TrainSet(task.name, items, dropped)


def read_corpus_blocks(tokenizer: Any, path: Path, block_size: int, name: str = "corpus") -> TrainSet:
    """Stage 0 data: documents separated by blank lines, each tokenized and
    ended with EOS, concatenated and cut into blocks of block_size tokens (the
    tail shorter than half a block is dropped and counted)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    docs = 0

    def flush(lines: list[str]) -> None:
        nonlocal docs
        text = "\n".join(lines).strip()
        if text:
            ids.extend(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
            if eos is not None:
                ids.append(eos)
            docs += 1

    lines: list[str] = []
    try:
        with open(path, encoding="utf-8") as fp:
            for line in fp:
                if line.strip():
                    lines.append(line.rstrip("\n"))
                else:
                    flush(lines)
                    lines = []
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError("stage0.corpus", f"cannot read the corpus ({exc})", str(path)) from None
    flush(lines)
    items: list[tuple[Feature, ...]] = [(Feature(name, tuple(ids[k : k + block_size]), 0),) for k in range(0, len(ids), block_size)]
    dropped = {}
    if items and len(items[-1][0].ids) < block_size // 2 and len(items) > 1:
        items.pop()
        dropped["short_tail"] = 1
    if not items or len(items[0][0].ids) < 2:
        raise ValidationError("stage0.corpus", "holds no text to train on", str(path))
    return TrainSet(name, items, dropped)


# -- batches --------------------------------------------------------------------------


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor
    rows: torch.Tensor  # (N,) batch row of each loss position
    cols: torch.Tensor  # (N,) position whose output predicts the target
    targets: torch.Tensor  # (N,)
    weights: torch.Tensor  # (N,) 1 / (answer tokens of its example x examples in the step)
    tokens: int  # real (unpadded) tokens
    examples: int


def collate(features: Sequence[Feature], pad_id: int, examples_in_step: int) -> MicroBatch:
    """Right-pad to the longest feature; loss positions are the answer tokens."""
    width = max(len(f.ids) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    rows, cols, targets, weights = [], [], [], []
    for b, f in enumerate(features):
        ids[b, : len(f.ids)] = torch.tensor(f.ids, dtype=torch.long)
        mask[b, : len(f.ids)] = 1
        start = max(f.n_prompt, 1)  # token 0 has nothing before it to predict it
        n = len(f.ids) - start
        if n <= 0:
            continue
        rows += [b] * n
        cols += list(range(start - 1, len(f.ids) - 1))
        targets += list(f.ids[start:])
        weights += [1.0 / (n * examples_in_step)] * n
    return MicroBatch(
        input_ids=ids,
        attention_mask=mask,
        rows=torch.tensor(rows, dtype=torch.long),
        cols=torch.tensor(cols, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        weights=torch.tensor(weights, dtype=torch.float32),
        tokens=int(mask.sum()),
        examples=len(features),
    )


def group_by_length(features: Sequence[Feature], micro_batch: int, seed: int, window: int) -> list[list[Feature]]:
    """Sort a window's features by length (ties: draw order), cut micro-batches,
    shuffle their order with a generator seeded by (seed, window)."""
    order = sorted(range(len(features)), key=lambda i: (len(features[i].ids), i))
    micro = [[features[j] for j in order[k : k + micro_batch]] for k in range(0, len(order), micro_batch)]
    perm = _shuffled(len(micro), random.Random(f"{seed}/window/{window}"))
    return [micro[p] for p in perm]


# -- the loss --------------------------------------------------------------------------


def unwrap(model: Any) -> Any:
    """The transformers model under a peft wrapper (LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


class AnswerLoss(nn.Module):
    """Weighted cross-entropy on the answer positions of a micro-batch. A
    module, so that DDP wraps the whole computation."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        base = unwrap(model)
        self.plain_head = getattr(base.config, "model_type", "") in _PLAIN_HEAD_TYPES and hasattr(base, "get_decoder")

    def forward(self, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.plain_head:
            base = unwrap(self.model)
            out = base.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            hidden = out.last_hidden_state[batch.rows, batch.cols]
            logits = base.get_output_embeddings()(hidden)
        else:
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            logits = logits[batch.rows, batch.cols]
        ce = F.cross_entropy(logits.float(), batch.targets, reduction="none")
        return (ce * batch.weights).sum(), ce.detach()


def answer_labels(batch: MicroBatch) -> torch.Tensor:
    """transformers' `labels` for the batch: each answer token where it
    stands, -100 (ignored) everywhere else."""
    labels = torch.full_like(batch.input_ids, -100)
    labels[batch.rows, batch.cols + 1] = batch.targets
    return labels


def reference_answer_loss(model: Any, batch: MicroBatch) -> torch.Tensor:
    """The same loss through the model's own forward and labels = -100 outside
    the answers (tests compare the fast path with it)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits.float()
    labels = answer_labels(batch)
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    ce = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none", ignore_index=-100)
    weights = torch.zeros_like(labels, dtype=torch.float32)
    weights[batch.rows, batch.cols + 1] = batch.weights
    return (ce * weights[:, 1:].reshape(-1)).sum()


# -- optimizer and schedule -------------------------------------------------------------


def lr_at(step: int, total: int, base_lr: float, warmup_ratio: float) -> float:
    """Linear warmup then linear decay (see the module docstring); step is 0-based.
    Kept by hand: transformers' get_linear_schedule_with_warmup starts at lr 0
    and ends at 0 (two wasted steps), and every stored run's plan means this one."""
    warm = min(math.ceil(warmup_ratio * total), max(total - 1, 0))
    if step < warm:
        return base_lr * (step + 1) / warm
    return base_lr * max(total - step, 1) / max(total - warm, 1)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)


# -- distributed ----------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


# How long a rank waits in a collective. Only rank 0 evaluates, while the others
# wait in the next step's gradient all-reduce: a dev evaluation of a large model
# can outlast torch's default (10 minutes on NCCL), which would kill a healthy job.
DIST_TIMEOUT = timedelta(hours=2)


def init_distributed(device_type: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    for var, engine in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        # `accelerate launch` with an FSDP or DeepSpeed config only sets these;
        # the trainer wraps DDP itself, so it would silently run unsharded.
        if os.environ.get(var, "").lower() in ("1", "true"):
            raise MtserveError(f"{var} is set: the trainer runs DDP only, {engine} is not wired (docs/training.md, 'Several GPUs')")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=DIST_TIMEOUT)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def check_world(grad_accum: int, world: int) -> None:
    """Each rank runs grad_accum / world micro-batches of a step; a remainder
    would leave ranks with unequal counts, and DDP would wait forever for the
    gradients of a backward pass that one rank never runs."""
    if grad_accum % world:
        raise ValidationError(
            "training.grad_accum",
            f"must be a multiple of the world size {world}: the ranks split each step's micro_batch x grad_accum examples "
            f"(lower micro_batch and raise grad_accum to keep the batch)", grad_accum,
        )


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# -- stages and evaluation hooks ---------------------------------------------------------


@dataclass
class StagePlan:
    name: str  # stage0 | stage1 | stage2 | single | mixture
    rates: dict[str, float]  # task -> sampling rate (normalized by the sampler)
    steps: int
    lr: float
    strategy: str = ""  # the rate function's name, for reports
    eval_every: int = 0  # 0: no periodic evaluation
    eval_at_start: bool = False  # evaluate before the first update (zero-shot)
    eval_at_end: bool = False
    select_best: bool = False  # keep the best evaluated weights (else the last)
    # Stop the stage after this many evaluations in a row without a new best
    # (0: never; needs select_best). The best weights are kept either way.
    patience: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "strategy": self.strategy, "rates": dict(self.rates), "steps": self.steps, "lr": self.lr,
            "eval_every": self.eval_every, "eval_at_start": self.eval_at_start, "eval_at_end": self.eval_at_end,
            "select_best": self.select_best, "patience": self.patience,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StagePlan:
        return cls(
            name=str(data["name"]), rates=dict(data["rates"]), steps=int(data["steps"]), lr=float(data["lr"]),
            strategy=str(data.get("strategy", "")), eval_every=int(data.get("eval_every", 0)),
            eval_at_start=bool(data.get("eval_at_start", False)), eval_at_end=bool(data.get("eval_at_end", False)),
            select_best=bool(data.get("select_best", False)), patience=int(data.get("patience", 0)),
        )


@dataclass(frozen=True)
class EvalSummary:
    """An evaluation in brief, for events and the run's history: each task's
    primary metric and its name, their mean, and, for a multi-task run gated
    against baselines, the tasks that would qualify at this point."""

    values: dict[str, float]
    metrics: dict[str, str]
    mean: float
    qualified: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"values": dict(self.values), "metrics": dict(self.metrics), "mean": self.mean}
        if self.qualified is not None:
            out["qualified"] = list(self.qualified)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalSummary:
        qualified = data.get("qualified")
        return cls(dict(data["values"]), dict(data["metrics"]), float(data["mean"]), None if qualified is None else list(qualified))


@dataclass
class EvalPoint:
    """What an evaluation returns to the loop: a score to maximize (compared as
    a tuple), a short summary for events and history, and the full payload
    (written to the run folder)."""

    score: tuple[float, ...]
    summary: EvalSummary
    payload: dict[str, Any]


Evaluator = Callable[[Any, str, int, dict[str, float]], EvalPoint]  # (model, stage, step, epochs per task)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation during training, as the run's history keeps it."""

    stage: str
    step: int
    epochs: dict[str, float]  # epochs of each task's data seen by then
    # Only rank 0 evaluates: on the other ranks an entry holds the position alone.
    summary: EvalSummary | None = None
    score: tuple[float, ...] | None = None
    file: str | None = None  # under the run's evals/: every task's full evaluation
    weights: str | None = None  # on the selected evaluation: "base" (before any update), "last", or a file under best/

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage, "step": self.step, "epochs": dict(self.epochs)}
        if self.summary is not None:
            out["summary"] = self.summary.to_dict()
        if self.score is not None:
            out["score"] = list(self.score)
        if self.file is not None:
            out["file"] = self.file
        if self.weights is not None:
            out["weights"] = self.weights
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        summary, score = data.get("summary"), data.get("score")
        return cls(
            stage=str(data["stage"]), step=int(data["step"]), epochs=dict(data["epochs"]),
            summary=None if summary is None else EvalSummary.from_dict(summary),
            score=None if score is None else tuple(score), file=data.get("file"), weights=data.get("weights"),
        )


@dataclass(frozen=True)
class StoppedEarly:
    """A stage ended by patience (StagePlan.patience) before its last step."""

    step: int
    patience: int
    best_step: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoppedEarly:
        return cls(int(data["step"]), int(data["patience"]), int(data["best_step"]))


# Stage records of runs trained before `patience` existed lack the key;
# `unrecorded` keeps them out of to_dict, so such records read back unchanged.
_STAGE_KEYS_ADDED_LATER = frozenset({"patience"})


@dataclass
class StageRecord:
    """A stage as it ran: its plan, how far it got, and, once it ended, the
    epochs of each task's data it saw."""

    index: int
    plan: StagePlan
    steps_done: int = 0
    tokens: int = 0
    stopped_early: StoppedEarly | None = None
    epochs: dict[str, float] | None = None
    unrecorded: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.plan.name, "index": self.index, **self.plan.to_dict(),
                               "steps_done": self.steps_done, "tokens": self.tokens}
        if self.stopped_early is not None:
            out["stopped_early"] = self.stopped_early.to_dict()
        if self.epochs is not None:
            out["epochs"] = dict(self.epochs)
        return {k: v for k, v in out.items() if k not in self.unrecorded}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRecord:
        stopped, epochs = data.get("stopped_early"), data.get("epochs")
        return cls(
            index=int(data["index"]), plan=StagePlan.from_dict(data), steps_done=int(data["steps_done"]), tokens=int(data["tokens"]),
            stopped_early=None if stopped is None else StoppedEarly.from_dict(stopped),
            epochs=None if epochs is None else dict(epochs), unrecorded=_STAGE_KEYS_ADDED_LATER - data.keys(),
        )


@dataclass
class LoopSettings:
    seed: int = 0
    micro_batch: int = 1
    grad_accum: int = 8
    length_group_steps: int = 8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float | None = 1.0
    precision: str = "auto"  # auto | fp32 | bf16
    state_every: int = 100
    log_every: int = 1

    @property
    def examples_per_step(self) -> int:
        return self.micro_batch * self.grad_accum


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run took up its saved state."""

    stage: str
    step: int
    stage_index: int
    stage_done: bool  # saved at the end of that stage: the next one starts afresh


@dataclass
class TrainProgress:
    """A run's progress over its stages: the loop advances it, every train
    state saves it (in its meta), a resumed run continues from it, and the run
    returns it."""

    stages: list[StageRecord] = field(default_factory=list)  # the stages started so far
    history: list[Evaluation] = field(default_factory=list)
    best: Evaluation | None = None  # the selected evaluation so far
    steps: int = 0  # optimizer steps over all stages
    tokens: int = 0
    seconds: float = 0.0  # training time, the time before an interruption included
    resumed_from: ResumePoint | None = None

    def to_meta(self) -> dict[str, Any]:
        return {
            "stages": [s.to_dict() for s in self.stages], "history": [h.to_dict() for h in self.history],
            "best": None if self.best is None else self.best.to_dict(),
            "tokens": self.tokens, "steps_total": self.steps, "seconds": self.seconds,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> TrainProgress:
        return cls(
            stages=[StageRecord.from_dict(s) for s in meta["stages"]], history=[Evaluation.from_dict(h) for h in meta["history"]],
            best=None if meta["best"] is None else Evaluation.from_dict(meta["best"]),
            steps=int(meta["steps_total"]), tokens=int(meta["tokens"]), seconds=float(meta["seconds"]),
        )


def stage_seed(seed: int, stage_index: int, name: str) -> int:
    return int(hashlib.sha256(f"{seed}/{stage_index}/{name}".encode()).hexdigest()[:12], 16)


def rank_seed(stage_seed: int, step: int, rank: int) -> int:
    """The generator seed of rank > 0 at a step (see the module docstring, Data parallel)."""
    return int(hashlib.sha256(f"{stage_seed}/step/{step}/rank/{rank}".encode()).hexdigest()[:12], 16)


class Trainer:
    """Runs a list of stages on one model, resumably (see trainer.checkpoint)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: LoopSettings,
        run_dir: Path,
        *,
        emit: Emit | None = None,
        evaluator: Evaluator | None = None,
        dist: Dist | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.s = settings
        self.run_dir = Path(run_dir)
        self.emit = emit or (lambda event: None)
        self.evaluator = evaluator
        self.dist = dist or Dist()
        self._started = 0.0  # set by run(): see there
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # One probe decides for training and serving (mtserve.precision): bf16
        # autocast where the device has bf16 matrix units, float32 weights and
        # optimizer state always.
        self.precision = resolve_precision(settings.precision, self.device)
        self.autocast_dtype = autocast_dtype(self.precision)
        self.loss_module: nn.Module = AnswerLoss(model)
        check_world(settings.grad_accum, self.dist.world)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_module = DDP(self.loss_module, device_ids=ids)

    # -- the public call ---------------------------------------------------------------
    def run(self, stages: Sequence[StagePlan], data: Mapping[str, TrainSet], *, resume: bool = True) -> TrainProgress:
        from trainer import checkpoint as ck

        started = time.monotonic()
        state = ck.load_train_state(self.run_dir, self.model) if resume else None
        progress = TrainProgress()
        first_stage = 0
        if state is not None:
            meta = state.meta
            progress = TrainProgress.from_meta(meta)
            first_stage = meta["stage_index"]
            last = meta.get("last_stage_step", meta["step"])
            progress.resumed_from = ResumePoint(meta["stage"], last, first_stage, bool(meta.get("stage_done")))
            self.emit({"event": "resumed", "stage": meta["stage"], "step": last, "stage_done": bool(meta.get("stage_done"))})
            if meta.get("stage_done"):
                state = None  # saved at a stage boundary: the next stage starts afresh on these weights
        # When the run would have started had it never stopped: its clock counts the time before a resume.
        self._started = started - progress.seconds
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            for i in range(first_stage, len(stages)):
                resume_here = state if (state is not None and state.meta["stage_index"] == i) else None
                self._run_stage(i, stages[i], data, progress, resume_here, is_last=i == len(stages) - 1)
                state = None
            self.model.train(False)
            best = progress.best
            if best is not None and best.weights not in (None, "last", "base"):
                ck.load_weights(self.model, self.run_dir / "best" / best.weights)
        finally:
            torch.use_deterministic_algorithms(deterministic)
        progress.seconds = time.monotonic() - self._started
        return progress

    # -- one stage ----------------------------------------------------------------------
    def _run_stage(
        self, index: int, plan: StagePlan, data: Mapping[str, TrainSet], progress: TrainProgress, state: TrainState | None, *, is_last: bool
    ) -> None:
        """Train stage `index` (from its start, or from `state` saved inside
        it), advancing `progress`. Only the last stage's evaluations select
        the run's weights."""
        from trainer import checkpoint as ck

        s = self.s
        seed = stage_seed(s.seed, index, plan.name)
        tasks = sorted(plan.rates)
        sizes = {t: len(data[t]) for t in tasks}
        sampler = MixtureSampler(plan.rates, sizes, seed)
        optimizer = build_optimizer(self.model, plan.lr, s.weight_decay)
        per_step = s.examples_per_step  # the global batch, split across ranks (see _step)
        consumed = {t: 0 for t in tasks}
        step = 0
        window_index, window_start_step = 0, 0
        window_sampler_state = sampler.state_dict()
        draws_at_window = 0
        if state is None:
            torch.manual_seed(seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed_all(seed)
            record = StageRecord(index, plan)
            progress.stages.append(record)
            self.emit({"event": "stage_started", "stage": plan.name, "steps": plan.steps, "rates": sampler.rates, "sizes": sizes})
        else:
            meta = state.meta
            step = meta["step"]
            consumed = dict(meta["consumed"])
            w = meta["window"]
            window_index, window_start_step, draws_at_window = w["index"], w["start_step"], w["draws"]
            window_sampler_state = w["sampler"]
            sampler.load_state_dict(window_sampler_state)
            ck.load_optimizer(optimizer, state)
            ck.restore_rng(state)
            record = progress.stages[-1]

        def epochs() -> dict[str, float]:
            return {t: consumed[t] / sizes[t] for t in tasks}

        self.model.train()
        if state is None and plan.eval_at_start and self.evaluator is not None:
            self._evaluate(plan, 0, epochs(), progress, is_last=is_last, untrained=progress.steps == 0)
            self.model.train()
        window: list[list[list[Feature]]] = []
        if step < plan.steps:
            window = self._draw_window(sampler, data, plan, seed, window_index, window_start_step, draws_at_window)
        loss_sum, loss_n, tok_window, time_window = 0.0, 0, 0, 0.0
        stopped = False
        while step < plan.steps and not stopped:
            k = step - window_start_step
            if k >= len(window):
                window_start_step = step
                draws_at_window += len(window) * per_step
                window_index += 1
                window_sampler_state = sampler.state_dict()
                window = self._draw_window(sampler, data, plan, seed, window_index, window_start_step, draws_at_window)
                k = 0
            tic = time.monotonic()
            micro = window[k]
            for f in (f for mb in micro for f in mb):
                consumed[f.task] += 1
            lr = lr_at(step, plan.steps, plan.lr, s.warmup_ratio)
            if self.dist.rank > 0:
                # Only rank 0's generator is saved with the state: the others draw
                # from one seeded by the step, the same after a resume, and never
                # the stream of another rank.
                torch.manual_seed(rank_seed(seed, step, self.dist.rank))
            loss, tokens = self._step(optimizer, micro, lr)
            step += 1
            progress.steps += 1
            progress.tokens += tokens
            record.steps_done = step
            record.tokens += tokens
            dt = time.monotonic() - tic
            loss_sum, loss_n, tok_window, time_window = loss_sum + loss, loss_n + 1, tok_window + tokens, time_window + dt
            if step % s.log_every == 0 or step == plan.steps:
                self.emit({
                    "event": "step", "stage": plan.name, "step": step, "steps": plan.steps, "loss": loss_sum / loss_n,
                    "lr": lr, "tokens_per_s": tok_window / max(time_window, 1e-9), "seconds_per_step": time_window / loss_n,
                    "epochs": epochs(),
                })
                loss_sum, loss_n, tok_window, time_window = 0.0, 0, 0, 0.0
            due_eval = self.evaluator is not None and (
                (plan.eval_every and step % plan.eval_every == 0) or (step == plan.steps and plan.eval_at_end)
            )
            if due_eval:
                self._evaluate(plan, step, epochs(), progress, is_last=is_last, untrained=False)
                self.model.train()
                best = progress.best
                if step < plan.steps and best is not None and self._patience_exhausted(plan, progress.history, best):
                    stopped = True
                    record.stopped_early = StoppedEarly(step, plan.patience, best.step)
                    self.emit({"event": "early_stop", "stage": plan.name, "step": step, "steps": plan.steps,
                               "best_step": best.step, "patience": plan.patience})
            finished = step == plan.steps or stopped
            if step % s.state_every == 0 or finished:
                progress.seconds = time.monotonic() - self._started
                meta = {
                    "stage_index": index if not finished else index + 1,
                    "stage": plan.name,
                    "step": step if not finished else 0,
                    "consumed": consumed if not finished else {},
                    "window": None if finished else {"index": window_index, "start_step": window_start_step, "draws": draws_at_window,
                                                     "sampler": window_sampler_state},
                    **progress.to_meta(),
                    "stage_done": finished,
                    "last_stage_step": step,
                }
                if self.dist.main:
                    ck.save_train_state(self.run_dir, self.model, optimizer, meta)
                    ck.prune_best(self.run_dir, keep=None if progress.best is None else progress.best.weights)
                    self.emit({"event": "state_saved", "stage": plan.name, "step": step})
                barrier(self.dist)
        record.epochs = epochs()

    @staticmethod
    def _patience_exhausted(plan: StagePlan, history: Sequence[Evaluation], best: Evaluation) -> bool:
        """`plan.patience` evaluations of this stage in a row after the best one."""
        if not (plan.patience and plan.select_best):
            return False
        since = [h for h in history if h.stage == plan.name and h.step > best.step]
        return len(since) >= plan.patience

    def _draw_window(
        self, sampler: MixtureSampler, data: Mapping[str, TrainSet], plan: StagePlan, seed: int, window: int, start_step: int, draws: int
    ) -> list[list[list[Feature]]]:
        """The next `length_group_steps` steps (fewer at the end of the stage):
        step -> the micro-batches of all ranks (each rank trains its share, _step)."""
        s = self.s
        n_steps = min(s.length_group_steps, plan.steps - start_step)
        per_step_micro = s.grad_accum  # all ranks' micro-batches of a step: every rank draws the whole window
        feats = []
        for j in range(n_steps * per_step_micro * s.micro_batch):
            task, idx = next(sampler)
            feats.append(data[task].pick(idx, draws + j, s.seed))
        micro = group_by_length(feats, s.micro_batch, seed, window)
        steps = []
        for k in range(n_steps):
            chunk = micro[k * per_step_micro : (k + 1) * per_step_micro]
            steps.append(chunk)
        return steps

    def _step(self, optimizer: torch.optim.Optimizer, micro: list[list[Feature]], lr: float) -> tuple[float, int]:
        """One optimizer step over the step's micro-batches (this rank's share
        of them); returns the loss of the whole step and its real tokens, over
        all ranks."""
        mine = micro[self.dist.rank :: self.dist.world]
        examples_in_step = sum(len(mb) for mb in micro)  # global: the weights of all ranks sum to one
        total_loss, tokens = 0.0, 0
        for j, mb in enumerate(mine):
            batch = collate(mb, self.pad_id, examples_in_step)
            batch = _to(batch, self.device)
            sync = contextlib.nullcontext()
            if self.dist.world > 1 and j < len(mine) - 1:
                sync = self.loss_module.no_sync()  # type: ignore[operator]
            with sync:
                with self._autocast():
                    loss, _ = self.loss_module(batch)
                (loss * self.dist.world).backward()
            total_loss += float(loss.detach())
            tokens += batch.tokens
        if self.s.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.s.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.dist.world > 1:
            import torch.distributed as dist

            # One small all-reduce a step, so that events report the step as one process would.
            both = torch.tensor([total_loss, float(tokens)], dtype=torch.float64, device=self.device)
            dist.all_reduce(both)
            total_loss, tokens = float(both[0]), int(both[1])
        return total_loss, tokens

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _evaluate(self, plan: StagePlan, step: int, epochs: dict[str, float], progress: TrainProgress, *, is_last: bool, untrained: bool) -> None:
        """Evaluate (rank 0), add the evaluation to the history, and select it
        when it beats the best so far (last stage only)."""
        from trainer import checkpoint as ck

        entry = Evaluation(plan.name, step, epochs)
        if self.dist.main:
            assert self.evaluator is not None
            point = self.evaluator(self.model, plan.name, step, epochs)
            name = f"{plan.name}-{step:07d}.json"
            ck.write_json(self.run_dir / "evals" / name, point.payload)
            entry = Evaluation(plan.name, step, epochs, point.summary, point.score, name)
        progress.history.append(entry)
        improved = False
        best = progress.best
        if plan.select_best and is_last and self.dist.main:
            assert entry.score is not None
            if best is None or best.score is None or entry.score > best.score:
                improved = True
                # Before any update the model is the base checkpoint itself: no copy.
                weights = "base" if untrained else f"{plan.name}-{step:07d}.safetensors"
                if weights != "base":
                    ck.save_weights(self.model, self.run_dir / "best" / weights)
                progress.best = replace(entry, weights=weights)
        elif is_last and not plan.select_best and self.dist.main:
            progress.best = replace(entry, weights="last")
        self.emit({"event": "eval", "stage": plan.name, "step": step, "epochs": epochs,
                   "summary": None if entry.summary is None else entry.summary.to_dict(), "best": improved})


def _to(batch: MicroBatch, device: torch.device) -> MicroBatch:
    if device.type == "cpu":
        return batch
    return MicroBatch(
        input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), rows=batch.rows.to(device),
        cols=batch.cols.to(device), targets=batch.targets.to(device), weights=batch.weights.to(device),
        tokens=batch.tokens, examples=batch.examples,
    )


__all__ = [
    "AnswerLoss",
    "Dist",
    "EvalPoint",
    "EvalSummary",
    "Evaluation",
    "Feature",
    "LoopSettings",
    "MicroBatch",
    "ResumePoint",
    "StagePlan",
    "StageRecord",
    "StoppedEarly",
    "TrainProgress",
    "TrainSet",
    "Trainer",
    "build_optimizer",
    "check_world",
    "collate",
    "encode_task",
    "group_by_length",
    "init_distributed",
    "lr_at",
    "rank_seed",
    "read_corpus_blocks",
    "reference_answer_loss",
    "stage_seed",
]
