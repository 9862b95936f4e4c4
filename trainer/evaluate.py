"""Score a task's examples through the serving path and compute its metrics.

Evaluation uses `Engine.predict`, the constrained decoding the inference
service runs, never a separate scorer: a metric measured here is the metric a
route will deliver. Every example keeps its own record (gold, prediction,
probabilities), so any metric can be recomputed later and two systems can be
compared example by example (trainer.qualify's paired bootstrap).

Metrics per taxonomy (the first is the *primary* one, used for qualification):

    binary / multiclass / ordinal   task.metric, then accuracy and macro_f1
                                    (ordinal: + mae_expected, |E[value] - gold value|, lower is better)
    multilabel                      task.metric, then micro_f1, macro_f1, accuracy (exact set)
    generation                      rouge_l (always primary: exact match of free text
                                    is near zero and too coarse to gate on), exact_match

Every figure carries a 95% percentile-bootstrap interval (seeded), proportions
also a Wilson interval. A `TaskEval` round-trips through JSON (runs are cached).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtserve.engine import Engine, Prediction, Request
from mtserve.errors import MtserveError, ValidationError
from mtserve.inputs import input_to_dict
from mtserve.tasks import Metric, Task, Taxonomy
from trainer.data import Example
from trainer.metrics import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Estimate,
    Statistic,
    accuracy_statistic,
    estimate,
    exact_match,
    f1_statistic,
    mean_statistic,
    rouge_l,
)

FORMAT_VERSION = 1
MAE_EXPECTED = "mae_expected"
# Metrics where lower is better; everything else is higher-is-better.
LOWER_IS_BETTER = frozenset({MAE_EXPECTED})

Progress = Callable[[int, int], None]  # (examples scored so far, total)


def primary_metric(task: Task) -> str:
    """The metric a task is qualified on: task.metric, except ROUGE-L for
    generation (the issue: exact match is near zero for free text)."""
    return Metric.ROUGE_L.value if task.is_generation else task.metric.value


def metric_names(task: Task) -> list[str]:
    """Every metric reported for a task, primary first."""
    if task.is_generation:
        names = [Metric.ROUGE_L.value, Metric.EXACT_MATCH.value]
    elif task.taxonomy is Taxonomy.MULTILABEL:
        names = [Metric.MICRO_F1.value, Metric.MACRO_F1.value, Metric.ACCURACY.value]
    else:
        names = [Metric.ACCURACY.value, Metric.MACRO_F1.value]
        if task.taxonomy is Taxonomy.ORDINAL:
            names.append(MAE_EXPECTED)
    first = primary_metric(task)
    return [first] + [n for n in names if n != first]


# -- per-example records ------------------------------------------------------------


@dataclass
class ExampleRecord:
    id: str
    gold: str | tuple[str, ...]  # label name, label set (task order), or target text
    pred: str | tuple[str, ...] | None  # the same shape; None when the engine refused the request
    correct: bool  # label equal / set equal / exact match
    probabilities: dict[str, float] | None = None  # single-label distribution, or per-label p (multi-label)
    expected_value: float | None = None  # ordinal
    abs_error: float | None = None  # ordinal: |expected_value - value of the gold label|
    rouge_l: float | None = None  # generation
    truncated: bool = False
    error: str | None = None

    @property
    def gold_probability(self) -> float | None:
        """p(gold label) for single-label tasks, handy for calibration plots."""
        if self.probabilities is None or not isinstance(self.gold, str):
            return None
        return self.probabilities.get(self.gold)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "gold": list(self.gold) if isinstance(self.gold, tuple) else self.gold,
            "pred": list(self.pred) if isinstance(self.pred, tuple) else self.pred,
            "correct": self.correct,
        }
        for key in ("probabilities", "expected_value", "abs_error", "rouge_l", "error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.truncated:
            out["truncated"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExampleRecord:
        def shape(v: Any) -> Any:
            return tuple(v) if isinstance(v, list) else v

        return cls(
            id=str(data["id"]),
            gold=shape(data["gold"]),
            pred=shape(data.get("pred")),
            correct=bool(data["correct"]),
            probabilities=None if data.get("probabilities") is None else {str(k): float(v) for k, v in data["probabilities"].items()},
            expected_value=data.get("expected_value"),
            abs_error=data.get("abs_error"),
            rouge_l=data.get("rouge_l"),
            truncated=bool(data.get("truncated", False)),
            error=data.get("error"),
        )


def record_for(task: Task, example: Example, result: Prediction | MtserveError) -> ExampleRecord:
    """One example's record from the engine's answer (or its error: kept, and
    counted as wrong, so a failing request can never raise a metric)."""
    gold = example.gold
    if isinstance(result, MtserveError):
        return ExampleRecord(
            id=example.id, gold=gold, pred=None, correct=False,
            rouge_l=0.0 if task.is_generation else None, error=str(result),
        )
    common = {"id": example.id, "gold": gold, "truncated": result.truncated}
    if task.is_generation:
        text = result.text or ""
        return ExampleRecord(
            pred=text, correct=exact_match(str(gold), text), rouge_l=rouge_l(str(gold), text), **common  # type: ignore[arg-type]
        )
    probs = {s.label: s.probability for s in result.scores}
    if task.taxonomy is Taxonomy.MULTILABEL:
        pred_set = tuple(n for n in task.label_names if n in set(result.labels))
        return ExampleRecord(pred=pred_set, correct=set(pred_set) == set(gold), probabilities=probs, **common)  # type: ignore[arg-type]
    abs_error = None
    if task.taxonomy is Taxonomy.ORDINAL and result.expected_value is not None:
        abs_error = abs(result.expected_value - float(task.label(str(gold)).value))  # type: ignore[arg-type]
    return ExampleRecord(
        pred=result.label, correct=result.label == gold, probabilities=probs,
        expected_value=result.expected_value, abs_error=abs_error, **common,  # type: ignore[arg-type]
    )


# -- one task's evaluation ----------------------------------------------------------


@dataclass
class TaskEval:
    task: str
    task_version: int | None
    taxonomy: str
    primary: str  # the qualification metric (see primary_metric)
    metrics: dict[str, Estimate]
    labels: list[str]  # the task's label names, in order (empty for generation)
    records: list[ExampleRecord]
    split: str = "dev"
    checkpoint: str | None = None
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    seconds: float = 0.0  # this task's share of the scoring time
    extra: dict[str, Any] = field(default_factory=dict)  # free-form (e.g. the job, the date)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def value(self) -> Estimate:
        return self.metrics[self.primary]

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if r.error is not None)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def statistic(self, metric: str | None = None) -> Statistic:
        """Per-example statistics of a metric, rebuilt from the records (for
        paired bootstraps and averages over tasks)."""
        return statistic_from_records(metric or self.primary, self.records, self.labels, multilabel=self.taxonomy == Taxonomy.MULTILABEL.value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "task": self.task,
            "task_version": self.task_version,
            "taxonomy": self.taxonomy,
            "primary": self.primary,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "labels": list(self.labels),
            "split": self.split,
            "checkpoint": self.checkpoint,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "seconds": self.seconds,
            "n": self.n,
            "errors": self.errors,
            "extra": dict(self.extra),
            "records": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskEval:
        if data.get("format") != FORMAT_VERSION:
            raise ValidationError("task_eval.format", f"must be {FORMAT_VERSION} (re-run the evaluation)", data.get("format"))
        return cls(
            task=str(data["task"]),
            task_version=data.get("task_version"),
            taxonomy=str(data["taxonomy"]),
            primary=str(data["primary"]),
            metrics={k: Estimate.from_dict(v) for k, v in data["metrics"].items()},
            labels=[str(x) for x in data.get("labels", [])],
            records=[ExampleRecord.from_dict(r) for r in data["records"]],
            split=str(data.get("split", "dev")),
            checkpoint=data.get("checkpoint"),
            n_resamples=int(data.get("n_resamples", DEFAULT_RESAMPLES)),
            seed=int(data.get("seed", DEFAULT_SEED)),
            seconds=float(data.get("seconds", 0.0)),
            extra=dict(data.get("extra") or {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> TaskEval:
        return cls.from_dict(json.loads(text))


def statistic_from_records(metric: str, records: Sequence[ExampleRecord], labels: Sequence[str], *, multilabel: bool = False) -> Statistic:
    """The per-example statistic of `metric` over `records` (in their order)."""
    if not records:
        raise ValidationError("records", "an evaluation needs at least one example", 0)
    gold = [r.gold for r in records]
    if multilabel:
        pred: list[Any] = [() if r.pred is None else r.pred for r in records]
    else:
        pred = [r.pred for r in records]
    if metric == Metric.ACCURACY.value:
        return accuracy_statistic(gold, pred)
    if metric in (Metric.MACRO_F1.value, Metric.MICRO_F1.value):
        return f1_statistic(gold, pred, list(labels) or None, average=metric.split("_")[0])
    if metric == Metric.EXACT_MATCH.value:
        return mean_statistic(metric, (r.correct for r in records), proportion=True)
    if metric == Metric.ROUGE_L.value:
        return mean_statistic(metric, (r.rouge_l or 0.0 for r in records))
    if metric == MAE_EXPECTED:
        missing = [r.id for r in records if r.abs_error is None]
        if missing:
            raise ValidationError(MAE_EXPECTED, "needs an expected value for every example (ordinal tasks, no errors)", missing[:5])
        return mean_statistic(metric, (float(r.abs_error) for r in records))  # type: ignore[arg-type]
    raise ValidationError("metric", "is not a metric this evaluation knows", metric)


def summarize(
    task: Task,
    records: list[ExampleRecord],
    *,
    split: str = "dev",
    checkpoint: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    seconds: float = 0.0,
) -> TaskEval:
    """Compute every metric of the task (with intervals) from its records."""
    multilabel = task.taxonomy is Taxonomy.MULTILABEL
    metrics: dict[str, Estimate] = {}
    for name in metric_names(task):
        if name == MAE_EXPECTED and any(r.abs_error is None for r in records):
            continue  # an engine error left an example without an expected value
        stat = statistic_from_records(name, records, task.label_names, multilabel=multilabel)
        metrics[name] = estimate(stat, n_resamples=n_resamples, seed=seed)
    return TaskEval(
        task=task.name,
        task_version=task.version,
        taxonomy=task.taxonomy.value,
        primary=primary_metric(task),
        metrics=metrics,
        labels=list(task.label_names),
        records=records,
        split=split,
        checkpoint=checkpoint,
        n_resamples=n_resamples,
        seed=seed,
        seconds=seconds,
    )


# -- scoring through the engine -------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    task_index: int
    example_index: int
    request: Request
    cost: int  # engine queries: one per label for multi-label, else one
    order_key: tuple[int, str]


def _items(tasks_and_examples: Sequence[tuple[Task, Sequence[Example]]]) -> list[_Item]:
    items = []
    for t, (task, examples) in enumerate(tasks_and_examples):
        cost = len(task.labels) if task.taxonomy is Taxonomy.MULTILABEL else 1
        for e, ex in enumerate(examples):
            key = json.dumps(input_to_dict(ex.input), sort_keys=True, ensure_ascii=False)
            items.append(_Item(t, e, Request(task, ex.input), cost, (len(key), key)))
    # Similar lengths together (less padding), and equal inputs adjacent so the
    # engine shares their prefix across tasks. A deterministic key: the order
    # must not depend on Python's per-process hash seed.
    items.sort(key=lambda it: (it.order_key, it.task_index, it.example_index))
    return items


def _batches(items: list[_Item], batch_size: int) -> list[list[_Item]]:
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    cost = 0
    for it in items:
        if current and cost + it.cost > batch_size:
            batches.append(current)
            current, cost = [], 0
        current.append(it)
        cost += it.cost
    if current:
        batches.append(current)
    return batches


def evaluate_many(
    engine: Engine,
    tasks_and_examples: Sequence[tuple[Task, Sequence[Example]]],
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
    split: str = "dev",
    checkpoint: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, TaskEval]:
    """Score several tasks' examples in mixed batches (the engine shares a
    prefix across tasks) and return each task's evaluation, keyed by task name.
    `batch_size` bounds engine queries per call (a multi-label example costs
    one per label); the engine packs each call into its own token budget."""
    if batch_size < 1:
        raise ValidationError("batch_size", "must be at least 1", batch_size)
    names = [task.name for task, _ in tasks_and_examples]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValidationError("tasks", "each task may appear once", dupes)
    for task, examples in tasks_and_examples:
        if not examples:
            raise ValidationError(f"examples[{task.name}]", "an evaluation needs at least one example", 0)
    results: list[list[Prediction | MtserveError | None]] = [[None] * len(ex) for _, ex in tasks_and_examples]
    seconds = [0.0] * len(tasks_and_examples)
    items = _items(tasks_and_examples)
    done = 0
    for batch in _batches(items, batch_size):
        start = time.perf_counter()
        answers = engine.predict([it.request for it in batch])
        elapsed = time.perf_counter() - start
        total_cost = sum(it.cost for it in batch)
        for it, answer in zip(batch, answers):
            results[it.task_index][it.example_index] = answer
            seconds[it.task_index] += elapsed * it.cost / total_cost  # each task's share of the batch
        done += len(batch)
        if progress is not None:
            progress(done, len(items))
    checkpoint = checkpoint if checkpoint is not None else (engine.name or None)
    out: dict[str, TaskEval] = {}
    for t, (task, examples) in enumerate(tasks_and_examples):
        records = [record_for(task, ex, res) for ex, res in zip(examples, results[t])]  # type: ignore[arg-type]
        out[task.name] = summarize(
            task, records, split=split, checkpoint=checkpoint, n_resamples=n_resamples, seed=seed, seconds=seconds[t]
        )
    return out


def evaluate_task(
    engine: Engine,
    task: Task,
    examples: Sequence[Example],
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
    split: str = "dev",
    checkpoint: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> TaskEval:
    """Score one task's examples through the engine (see evaluate_many)."""
    return evaluate_many(
        engine, [(task, examples)], batch_size=batch_size, progress=progress,
        split=split, checkpoint=checkpoint, n_resamples=n_resamples, seed=seed,
    )[task.name]



# -- trivial baselines ------------------------------------------------------------------


@dataclass(frozen=True)
class Trivial:
    """What a model that ignores its input scores: the yardstick a baseline
    must beat before anyone trusts it."""

    rule: str  # how the constant answer was chosen, for the table's reader
    answer: str | tuple[str, ...] | None  # the constant answer (None: not defined for this task)
    eval: TaskEval | None

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "answer": list(self.answer) if isinstance(self.answer, tuple) else self.answer,
                "eval": self.eval.to_dict() if self.eval is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trivial:
        answer = data.get("answer")
        return cls(str(data["rule"]), tuple(answer) if isinstance(answer, list) else answer,
                   TaskEval.from_dict(data["eval"]) if data.get("eval") else None)

    @property
    def value(self) -> float | None:
        return None if self.eval is None else self.eval.value.value


def _constant_records(task: Task, examples: Sequence[Example] | Sequence[ExampleRecord], answer: str | tuple[str, ...]) -> list[ExampleRecord]:
    records = []
    for ex in examples:
        gold = ex.gold
        if task.taxonomy is Taxonomy.MULTILABEL:
            records.append(ExampleRecord(id=ex.id, gold=gold, pred=answer, correct=set(answer) == set(gold)))
            continue
        expected = abs_error = None
        if task.taxonomy is Taxonomy.ORDINAL:
            expected = float(task.label(str(answer)).value)  # type: ignore[arg-type]
            abs_error = abs(expected - float(task.label(str(gold)).value))  # type: ignore[arg-type]
        records.append(ExampleRecord(id=ex.id, gold=gold, pred=answer, correct=answer == gold,
                                     expected_value=expected, abs_error=abs_error))
    return records


def trivial_baseline(task: Task, train: Sequence[Example], dev: Sequence[Example], *, split: str = "dev") -> Trivial:
    """The constant answer chosen on the training set, scored on `dev` with the
    task's own metrics:

    binary, multiclass, ordinal   the majority label of train (ties: label order)
    multilabel                    the best constant label set on train by the primary
                                  metric, among the k most frequent labels for k = 0..L
                                  (the empty set scores micro-F1 0, so it is only the
                                  trivial answer when nothing beats it)
    generation                    not defined (no constant text is a fair yardstick)
    """
    if task.is_generation:
        return Trivial("not defined for generation tasks", None, None)
    counts = {n: 0 for n in task.label_names}
    for ex in train:
        for name in ((ex.label,) if isinstance(ex.label, str) else tuple(ex.label or ())):
            counts[name] = counts.get(name, 0) + 1
    by_freq = sorted(task.label_names, key=lambda n: (-counts[n], task.label_names.index(n)))
    answer_out: str | tuple[str, ...]
    if task.taxonomy is Taxonomy.MULTILABEL:
        best: tuple[float, tuple[str, ...]] | None = None
        for k in range(len(by_freq) + 1):
            chosen = set(by_freq[:k])
            answer = tuple(n for n in task.label_names if n in chosen)
            stat = statistic_from_records(primary_metric(task), _constant_records(task, train, answer), task.label_names, multilabel=True)
            if best is None or stat.value() > best[0]:
                best = (stat.value(), answer)
        assert best is not None
        rule, answer_out = f"best constant label set on train by {primary_metric(task)}", best[1]
    else:
        rule, answer_out = "majority label of train", by_freq[0]
    return Trivial(rule, answer_out, summarize(task, _constant_records(task, dev, answer_out), split=split, checkpoint="trivial"))


def trivial_on(task: Task, trivial: Trivial, scored: TaskEval) -> TaskEval | None:
    """The same constant answer scored on the examples of another evaluation
    (the test split of a baseline), so both splits have their trivial row."""
    if trivial.answer is None:
        return None
    return summarize(task, _constant_records(task, scored.records, trivial.answer), split=scored.split, checkpoint="trivial")


def is_degenerate(baseline: TaskEval, trivial: Trivial) -> bool:
    """A baseline that does not beat its trivial baseline on the primary metric:
    a gate against it says little."""
    return trivial.value is not None and baseline.value.value <= trivial.value + 1e-12

__all__ = [
    "MAE_EXPECTED",
    "ExampleRecord",
    "TaskEval",
    "Trivial",
    "evaluate_many",
    "evaluate_task",
    "is_degenerate",
    "metric_names",
    "primary_metric",
    "record_for",
    "statistic_from_records",
    "summarize",
    "trivial_baseline",
    "trivial_on",
]
