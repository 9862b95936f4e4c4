"""What more tasks cost on the engine: every applicable task of a
conversation against one task (`cost`), and against the same tasks asked
one call each (`sharing`, the former `mtserve bench engine`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mtserve.engine import Engine, Request
from mtserve.inputs import Input
from mtserve.predictions import Prediction
from mtserve.tasks import Catalogue, Taxonomy
from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.harness import Result, alternate, ratio, summaries, timed
from mtserve_cli.benchmarks.workload import BenchConfig

ALL, ONE, EACH = "all applicable tasks, one call", "one task, one call", "all applicable tasks, one call per task"
ALL_COMPACT, ONE_COMPACT = f"{ALL} (compact suffixes)", f"{ONE} (compact suffixes)"


def token_counts(engine: Engine, cat: Catalogue, inputs: list[Input]) -> dict[str, Any]:
    """How long the prefixes are and how many question tokens a conversation
    asks (a multi-label task asks one question per label)."""
    prefixes, questions = [], []
    for inp in inputs:
        rendered = engine.renderer.render_input(inp)
        prefixes.append(len(rendered.ids))
        total = 0
        for task in workload.applicable(cat, inp):
            asks = task.labels if task.taxonomy is Taxonomy.MULTILABEL else (None,)
            total += sum(len(engine.renderer.render(task, inp, ask=a, rendered_input=rendered).suffix) for a in asks)
        questions.append(total)
    return {
        "prefix_tokens_min": min(prefixes), "prefix_tokens_max": max(prefixes),
        "question_tokens_per_conversation_median": statistics.median(questions),
        "tasks_per_conversation_median": statistics.median(len(workload.applicable(cat, i)) for i in inputs),
    }


def _setup(cfg: BenchConfig) -> tuple[Engine, Catalogue, list[Input], Any]:
    cat = workload.catalogue()
    loaded = workload.load(cfg)
    return workload.engine(loaded, cfg, cat), cat, workload.conversations(cfg.n), loaded


def _config(cfg: BenchConfig, loaded: Any) -> dict[str, Any]:
    return {"model": loaded.id, "dtype": "float32", "conversations": cfg.n, "repeats": cfg.repeats, "smoke": cfg.smoke,
            "max_batch_tokens": cfg.settings.inference.max_batch_tokens}


def cost(cfg: BenchConfig) -> Result:
    """Both prompt styles on the same model and conversations, their four arms
    alternated: the natural-language instructions the checkpoint is asked
    with, and compact task markers (mixture.suffixes: compact). The compact
    arms price the prompt, not its answers: an untrained model has not learnt
    the markers, so their quality is the reproduction's compact row."""
    cat, inputs = workload.catalogue(), workload.conversations(cfg.n)
    loaded = workload.load(cfg)
    # Each pair of arms in its own style, whatever the checkpoint was trained with.
    trained = loaded.manifest.prompt_style
    engine = workload.engine(loaded, cfg, cat, style=replace(trained, suffixes="natural", learnt=None))
    compact = workload.engine(loaded, cfg, cat, style=replace(trained, suffixes="compact", learnt=None))
    per_conv = workload.all_tasks_requests(cat, inputs)
    single = [[Request(workload.one_task(cat, inp), inp)] for inp in inputs]
    for e in (engine, compact):
        e.predict(per_conv[0])  # warm-up: allocator, first-call overheads

    def arm(e: Engine, batches: list[list[Request]]) -> Callable[[], float]:  # seconds per conversation
        return lambda: timed(lambda: [e.predict(b) for b in batches]) / len(batches)

    arms = {ALL: arm(engine, per_conv), ONE: arm(engine, single), ALL_COMPACT: arm(compact, per_conv), ONE_COMPACT: arm(compact, single)}
    figures = alternate(list(arms.items()), cfg.repeats)
    return Result(
        measure="cost",
        question="every applicable task of one conversation in one call / one task in one call",
        arms=summaries(figures, "s/conv"),
        # The goals: <= 2.5x with the natural-language instructions,
        # <= 1.5x with compact task suffixes.
        ratios=[ratio(figures, ALL, ONE, "lower is better", goal=2.5), ratio(figures, ALL_COMPACT, ONE_COMPACT, "lower is better", goal=1.5)],
        config=_config(cfg, loaded),
        details={"natural": token_counts(engine, cat, inputs), "compact": token_counts(compact, cat, inputs),
                 "one_task": sorted({b[0].task.name for b in single})},
    )


def _agree(a: list[Prediction | Exception], b: list[Prediction | Exception], tol: float) -> bool:
    for x, y in zip(a, b, strict=True):
        if not isinstance(x, Prediction) or not isinstance(y, Prediction) or x.label != y.label:
            return False
        if any(abs(p.probability - q.probability) > tol for p, q in zip(x.scores, y.scores)):
            return False
    return True


def sharing(cfg: BenchConfig) -> Result:
    engine, cat, inputs, loaded = _setup(cfg)
    per_conv = workload.all_tasks_requests(cat, inputs)
    n_requests = sum(len(r) for r in per_conv)
    answers: dict[str, list[Any]] = {}

    def shared() -> float:
        return timed(lambda: answers.__setitem__(ALL, [p for reqs in per_conv for p in engine.predict(reqs)])) / n_requests

    def each() -> float:
        return timed(lambda: answers.__setitem__(EACH, [engine.predict([r])[0] for reqs in per_conv for r in reqs])) / n_requests

    engine.predict(per_conv[0])
    figures = alternate([(EACH, each), (ALL, shared)], cfg.repeats)
    return Result(
        measure="sharing",
        question="the tasks of a conversation asked one call each / all in one call (the shared prefix's gain)",
        arms=summaries(figures, "s/request"),
        ratios=[ratio(figures, EACH, ALL, "higher is better")],
        config={**_config(cfg, loaded), "requests": n_requests},
        details={"answers_agree_1e-5": _agree(answers[EACH], answers[ALL], 1e-5)},
    )
