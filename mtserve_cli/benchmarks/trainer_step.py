"""The trainer's step against a bare training loop: `trainer.train.Trainer`
running one stage (its sampler, length grouping, answer-only loss, gradient
clipping, events) against the loop a user writes over the same examples
(`model(input_ids, attention_mask, labels)` with -100 outside the answers,
backward, clip, AdamW), both float32 with 8 examples a step as 8
one-example forward/backward passes (the trainer's default).

Both arms are rates of real tokens per second over their steps after the
first, so neither pays for its warm-up, the optimizer's creation or the
trainer's end-of-stage state save (that is a per-stage cost; docs/training.md).
The examples are the bench conversations as the training renderer cuts them
(160 tokens at most, as in the reproduction), each labelled with its task's
first label: the figure is speed, not learning."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mtserve.prompt import PromptRenderer
from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.harness import Result, alternate, ratio, summaries
from mtserve_cli.benchmarks.workload import BenchConfig
from trainer.data import Example
from trainer.train import (
    AnswerLoss,
    Feature,
    LoopSettings,
    StagePlan,
    Trainer,
    TrainSet,
    answer_labels,
    build_optimizer,
    collate,
    encode_task,
)

TRAINER, BARE = "trainer step (Trainer, one stage)", "bare loop (model(labels), backward, AdamW)"
MAX_SEQ_LEN = 160
LR = 3e-4


def training_sets(tokenizer: Any, n: int) -> dict[str, TrainSet]:
    cat = workload.catalogue()
    renderer = PromptRenderer(tokenizer, cat.truncation)
    by_task: dict[str, list[Example]] = {}
    for i, inp in enumerate(workload.conversations(n)):
        task = workload.one_task(cat, inp)
        by_task.setdefault(task.name, []).append(Example(f"bench-{i}", inp, task.labels[0].name))
    return {name: encode_task(renderer, cat.task(name), examples, max_seq_len=MAX_SEQ_LEN) for name, examples in by_task.items()}


def trainer_rate(model: Any, tokenizer: Any, sets: dict[str, TrainSet], steps: int, loop: LoopSettings) -> float:
    """Real tokens a second over the stage's steps after the first, timed by
    when the trainer reports each step."""
    marks: list[tuple[float, int]] = []  # (time of the step's event, the step's real tokens)

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step":
            marks.append((time.perf_counter(), round(event["tokens_per_s"] * event["seconds_per_step"])))

    plan = StagePlan("single", {name: 1.0 for name in sets}, steps, LR)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as run_dir:
        Trainer(model, tokenizer, loop, Path(run_dir), emit=on_event).run([plan], sets, resume=False)
    model.train(False)
    (t0, _), rest = marks[0], marks[1:]
    return sum(tokens for _, tokens in rest) / (rest[-1][0] - t0)


def bare_rate(model: Any, pad_id: int, features: list[Feature], steps: int, loop: LoopSettings) -> float:
    """The same rate for the plain loop over the same features, in order."""
    optimizer = build_optimizer(model, LR, loop.weight_decay)
    model.train()
    per_step = loop.examples_per_step
    marks: list[tuple[float, int]] = []
    for step in range(steps):
        chosen = [features[(step * per_step + k) % len(features)] for k in range(per_step)]
        tokens = 0
        for j in range(0, per_step, loop.micro_batch):
            batch = collate(chosen[j : j + loop.micro_batch], pad_id, per_step)
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=answer_labels(batch), use_cache=False)
            (out.loss / (per_step // loop.micro_batch)).backward()
            tokens += batch.tokens
        torch.nn.utils.clip_grad_norm_(model.parameters(), loop.max_grad_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append((time.perf_counter(), tokens))
    model.train(False)
    (t0, _), rest = marks[0], marks[1:]
    return sum(tokens for _, tokens in rest) / (rest[-1][0] - t0)


def trainer_step(cfg: BenchConfig) -> Result:
    loaded = workload.load(cfg)
    model, tokenizer = loaded.model, loaded.tokenizer
    steps = max(cfg.n, 3)  # at least two timed steps after the first
    loop = LoopSettings(precision="fp32", state_every=10**9)
    sets = training_sets(tokenizer, max(cfg.n, 4) * loop.examples_per_step // 2)
    features = [f for s in sets.values() for item in s.items for f in item]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    figures = alternate(
        [(TRAINER, lambda: trainer_rate(model, tokenizer, sets, steps, loop)), (BARE, lambda: bare_rate(model, pad_id, features, steps, loop))],
        cfg.repeats,
    )
    lengths = sorted(len(f.ids) for f in features)
    return Result(
        measure="trainer",
        question="the trainer's tokens/s / a bare forward-backward loop's, same examples, float32",
        arms=summaries(figures, "tokens/s"),
        ratios=[ratio(figures, TRAINER, BARE, "higher is better", goal=0.9)],
        config={"model": loaded.id, "dtype": "float32", "steps_per_repeat": steps, "examples_per_step": loop.examples_per_step,
                "micro_batch": loop.micro_batch, "max_seq_len": MAX_SEQ_LEN, "repeats": cfg.repeats, "smoke": cfg.smoke},
        details={"examples": len(features), "tokens_per_example_median": lengths[len(lengths) // 2], "tasks": sorted(sets),
                 "loss_check": _loss_check(model, pad_id, features)},
    )


def _loss_check(model: Any, pad_id: int, features: list[Feature]) -> float:
    """|trainer loss - bare loss| on one example: both arms train the same objective."""
    batch = collate(features[:1], pad_id, 1)
    with torch.no_grad():
        ours, _ = AnswerLoss(model)(batch)
        bare = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=answer_labels(batch), use_cache=False).loss
    return abs(float(ours) - float(bare))
