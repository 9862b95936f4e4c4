"""The model side every run shares: the base loaded for training (with fresh
LoRA layers when asked), the tasks' training data rendered, and dev sets
scored through the serving engine, also as the evaluator the training loop
calls."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mtserve.errors import ValidationError
from mtserve.precision import autocast_dtype
from mtserve.prompt import PromptRenderer, PromptStyle
from mtserve.tasks import Task
from trainer.evaluate import TaskEval, evaluate_many
from trainer.job import JobSpec
from trainer.pipeline.context import Context, Emit
from trainer.qualify import qualify
from trainer.train import EvalPoint, EvalSummary, Evaluator, LoopSettings, TrainSet, encode_task, unwrap


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


def loop_settings(spec: JobSpec) -> LoopSettings:
    t = spec.training
    return LoopSettings(
        seed=spec.seed, micro_batch=t.micro_batch, grad_accum=t.grad_accum, length_group_steps=t.length_group_steps,
        weight_decay=t.weight_decay, warmup_ratio=t.warmup_ratio, max_grad_norm=t.max_grad_norm, precision=t.precision,
        state_every=t.state_every_steps, log_every=t.log_every_steps,
    )


def encode_tasks(ctx: Context, tokenizer: Any, tasks: Sequence[Task], style: PromptStyle) -> dict[str, TrainSet]:
    renderer = PromptRenderer(tokenizer, ctx.catalogue.truncation, style=style)
    out = {}
    for t in tasks:
        out[t.name] = encode_task(renderer, t, ctx.train_examples(t.name), max_seq_len=ctx.spec.max_seq_len, multilabel=ctx.spec.training.multilabel)
        if out[t.name].dropped:
            ctx.emit({"event": "dropped", "task": t.name, "reasons": out[t.name].dropped})
    return out


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
    ctx: Context, model: Any, tokenizer: Any, tasks: Sequence[Task], style: PromptStyle, *, split: str = "dev", label: str = "",
    emit: Emit | None = None,
) -> dict[str, TaskEval]:
    """Evaluate through the serving engine (constrained decoding), asking in the
    style the model is trained in."""
    from mtserve.engine import Engine

    engine = Engine(unwrap(model), tokenizer, ctx.catalogue.truncation, max_batch_tokens=ctx.spec.eval.max_batch_tokens, style=style, name=label)
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


def make_evaluator(
    ctx: Context, tokenizer: Any, tasks: Sequence[Task], style: PromptStyle, baselines: Mapping[str, TaskEval] | None, label: str,
    emit: Emit,
) -> Evaluator:
    """Scores the model on the tasks' dev sets. Score to maximize: the primary
    metric (one task); (qualified tasks, mean metric) with baselines; else the mean."""

    def evaluate(model: Any, stage: str, step: int, epochs: dict[str, float]) -> EvalPoint:
        evals = score_dev(ctx, model, tokenizer, tasks, style, label=f"{label}@{stage}:{step}", emit=emit)
        values = {n: ev.value.value for n, ev in evals.items()}
        mean = sum(values.values()) / len(values)
        qualified = None
        score: tuple[float, ...] = (mean,)
        if baselines and len(tasks) > 1:
            quals = {n: qualify(ev, baselines[n]) for n, ev in evals.items() if n in baselines}
            qualified = sorted(n for n, q in quals.items() if q.qualified)
            score = (float(len(qualified)), mean)
        summary = EvalSummary(values, {n: ev.primary for n, ev in evals.items()}, mean, qualified)
        return EvalPoint(score, summary, {n: ev.to_dict() for n, ev in evals.items()})

    return evaluate
