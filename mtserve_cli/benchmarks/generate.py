"""mtserve against what users write instead: a batched `model.generate()`
loop over the same prompts (one prompt per task, and per label of a
multi-label task, as mtserve asks them), greedy, `max_new_tokens` = the
task's longest label in tokens, the output parsed back to a label. Free
decoding can answer something that is no label: those are counted.

Both prompt styles, as in `cost`: the natural-language instructions and
compact task markers (mixture.suffixes: compact), each pair of arms asking
the same prompts. The compact pair prices the prompts: a model not trained
with the markers answers them at chance, so only the natural pair's
agreement and invalid counts say anything about answers."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import torch

from mtserve.engine import Engine, Request, label_verbalizers
from mtserve.inputs import Input
from mtserve.predictions import Prediction
from mtserve.tasks import Catalogue, Task, Taxonomy
from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.harness import Result, alternate, ratio, summaries, timed
from mtserve_cli.benchmarks.workload import BenchConfig

GENERATE, MTSERVE = "batched generate() loop", "mtserve, all tasks shared"
COMPACT = " (compact suffixes)"
BATCH = 8  # prompts per generate() call, and conversations per engine call


@dataclass(frozen=True)
class Question:
    task: Task
    ask: Any  # the label asked (multi-label), else None
    prompt: tuple[int, ...]
    conversation: int


def questions(engine: Engine, cat: Catalogue, inputs: list[Input]) -> list[Question]:
    out = []
    for c, inp in enumerate(inputs):
        for task in workload.applicable(cat, inp):
            for ask in task.labels if task.taxonomy is Taxonomy.MULTILABEL else (None,):
                out.append(Question(task, ask, engine.renderer.render(task, inp, ask=ask).prompt, c))
    return out


def parse(text: str, verbalizers: tuple[str, ...]) -> str | None:
    """The verbalizer a generated answer names: its first line equal to one
    (case and trailing punctuation aside), else the longest one it starts
    with at a word boundary; None when it names none."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    norm = line.casefold().rstrip(".!,; ")
    by_norm = {v.casefold(): v for v in verbalizers}
    if norm in by_norm:
        return by_norm[norm]
    for v in sorted(verbalizers, key=len, reverse=True):
        if re.match(re.escape(v.casefold()) + r"(\W|$)", norm):
            return v
    return None


def generate_loop(engine: Engine, qs: list[Question]) -> list[str | None]:
    """What a user writes: per task (and asked label), batches of prompts
    through generate(); returns each question's parsed verbalizer."""
    model, tokenizer, end = engine.model, engine.tokenizer, engine.renderer.end_of_answer_id
    answers: list[str | None] = [None] * len(qs)
    groups: dict[tuple[str, Any], list[int]] = {}
    for k, q in enumerate(qs):
        groups.setdefault((q.task.name, q.ask), []).append(k)
    for members in groups.values():
        _, verbs = label_verbalizers(qs[members[0]].task)
        longest = max(len(engine.renderer.encode_text(v)) for v in verbs)
        for start in range(0, len(members), BATCH):
            batch = members[start : start + BATCH]
            width = max(len(qs[k].prompt) for k in batch)
            ids = torch.full((len(batch), width), engine.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, k in enumerate(batch):  # left-padded, as generate() needs
                p = qs[k].prompt
                ids[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = 1
            with torch.inference_mode():
                out = model.generate(input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device), max_new_tokens=longest,
                                     do_sample=False, pad_token_id=engine.pad_id, eos_token_id=end)
            for r, k in enumerate(batch):
                text = tokenizer.decode(out[r, width:], skip_special_tokens=True)
                answers[k] = parse(text, verbs)
    return answers


def mtserve_answers(engine: Engine, cat: Catalogue, inputs: list[Input]) -> list[Prediction]:
    out: list[Prediction] = []
    for start in range(0, len(inputs), BATCH):
        requests = [Request(t, inp) for inp in inputs[start : start + BATCH] for t in workload.applicable(cat, inp)]
        out += [p for p in engine.predict(requests) if isinstance(p, Prediction)]
    return out


def _mtserve_verbalizers(cat: Catalogue, inputs: list[Input], predictions: list[Prediction]) -> list[str]:
    """mtserve's answer to each question, as the verbalizer generate() should have produced."""
    out = []
    it = iter(predictions)
    for inp in inputs:
        for task in workload.applicable(cat, inp):
            p = next(it)
            if task.taxonomy is Taxonomy.MULTILABEL:
                out += ["yes" if s.probability >= 0.5 else "no" for s in p.scores]
            else:
                out.append(next(label.verbalizer for label in task.labels if label.name == p.label))
    return out


def generate(cfg: BenchConfig) -> Result:
    cat = workload.catalogue()
    loaded = workload.load(cfg)
    trained = loaded.manifest.prompt_style  # each pair of arms in its own style, whatever the checkpoint was trained with
    engines = {"": workload.engine(loaded, cfg, cat, style=replace(trained, suffixes="natural", learnt=None)),
               COMPACT: workload.engine(loaded, cfg, cat, style=replace(trained, suffixes="compact", learnt=None))}
    inputs = workload.conversations(cfg.n)
    qs = {style: questions(engine, cat, inputs) for style, engine in engines.items()}
    seen: dict[str, Any] = {}

    def arms(style: str, engine: Engine) -> list[tuple[str, Any]]:
        return [(GENERATE + style, lambda: timed(lambda: seen.__setitem__(GENERATE + style, generate_loop(engine, qs[style])))),
                (MTSERVE + style, lambda: timed(lambda: seen.__setitem__(MTSERVE + style, mtserve_answers(engine, cat, inputs))))]

    figures = alternate([arm for style, engine in engines.items() for arm in arms(style, engine)], cfg.repeats)
    free = seen[GENERATE]
    constrained = _mtserve_verbalizers(cat, inputs, seen[MTSERVE])
    valid = [(a, b) for a, b in zip(free, constrained) if a is not None]
    return Result(
        measure="generate",
        question="a batched generate() loop over the same questions, parsed to labels / mtserve (seconds, same dtype)",
        arms=summaries(figures, "s"),
        ratios=[ratio(figures, GENERATE + style, MTSERVE + style, "higher is better", goal=10.0) for style in engines],
        config={"model": loaded.id, "dtype": "float32", "conversations": cfg.n, "questions": len(qs[""]), "batch": BATCH,
                "repeats": cfg.repeats, "smoke": cfg.smoke,
                "prompt_tokens": {"natural": sum(len(q.prompt) for q in qs[""]), "compact": sum(len(q.prompt) for q in qs[COMPACT])}},
        details={"invalid_outputs": sum(a is None for a in free), "outputs": len(free),
                 "generated_equals_mtserve_top": sum(a == b for a, b in valid), "mtserve_invalid_outputs": 0,
                 "compact_invalid_outputs": sum(a is None for a in seen[GENERATE + COMPACT])},
        notes=["mtserve's answers are labels by construction (constrained decoding): it has no invalid outputs",
               "the compact arms price the prompts; a model not trained with the markers answers them at chance"],
    )
