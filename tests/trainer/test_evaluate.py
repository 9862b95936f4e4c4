"""Evaluation through the serving engine on a tiny random model, and the
record/metric bookkeeping on hand-made predictions."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mtserve.engine import Engine, LabelScore, Prediction, Request
from mtserve.errors import ValidationError
from mtserve.inputs import Conversation, Speaker, Text, Turn
from mtserve.tasks import Channel
from trainer.data import Example
from trainer.evaluate import TaskEval, evaluate_many, evaluate_task, metric_names, primary_metric, record_for, summarize


def call(i: int, *, channel: Channel = Channel.CALL) -> Conversation:
    return Conversation(
        channel=channel,
        turns=(Turn(Speaker.CUSTOMER, f"hello, booking {i} at the harbour hotel was cancelled"), Turn(Speaker.AGENT, "sorry, let me check")),
        conversation_id=f"c{i}",
    )


@pytest.fixture(scope="module")
def engine(tiny_llama, hotel):
    return Engine(tiny_llama.model, tiny_llama.tokenizer, hotel.truncation, name="tiny-llama")


@pytest.fixture(scope="module")
def suite(hotel):
    """Four taxonomies on shared conversations (so prefixes are shared across tasks)."""
    see, csc, rca = hotel.task("see"), hotel.task("csc"), hotel.task("rc-a")
    cs = dataclasses.replace(hotel.task("cs"), max_new_tokens=4)
    n = 5
    return [
        (see, [Example(f"s{i}", call(i), see.label_names[i % 5]) for i in range(n)]),
        (csc, [Example(f"m{i}", call(i), csc.label_names[: i % 3]) for i in range(n)]),
        (rca, [Example(f"r{i}", call(i), "yes" if i % 2 else "no") for i in range(n)]),
        (cs, [Example(f"g{i}", call(i), None, "预订被取消 booking cancelled") for i in range(3)]),
    ]


@pytest.fixture(scope="module")
def evals(engine, suite):
    seen: list[tuple[int, int]] = []
    out = evaluate_many(engine, suite, batch_size=8, progress=lambda done, total: seen.append((done, total)), n_resamples=200)
    out["_progress"] = seen  # type: ignore[assignment]
    return out


def test_every_task_gets_a_valid_evaluation(evals, suite):
    for task, examples in suite:
        ev = evals[task.name]
        assert ev.n == len(examples) and ev.errors == 0 and ev.checkpoint == "tiny-llama"
        assert ev.primary == primary_metric(task) and list(ev.metrics) == metric_names(task)
        assert [r.id for r in ev.records] == [e.id for e in examples]  # the caller's order, not the batching order
        for est in ev.metrics.values():
            assert est.low <= est.value <= est.high and est.n == len(examples)
        assert ev.seconds > 0
    progress = evals["_progress"]
    assert progress[-1] == (18, 18) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_records_per_taxonomy(evals, hotel):
    see = evals["see"]
    for r in see.records:
        assert sum(r.probabilities.values()) == pytest.approx(1.0)
        assert r.correct == (r.pred == r.gold)
        value = float(hotel.task("see").label(r.gold).value)
        assert r.abs_error == pytest.approx(abs(r.expected_value - value))
    assert see.metrics["mae_expected"].value == pytest.approx(sum(r.abs_error for r in see.records) / see.n)
    assert see.metrics["accuracy"].wilson is not None
    csc = evals["csc"]
    threshold = hotel.task("csc").threshold
    for r in csc.records:
        assert set(r.probabilities) == set(hotel.task("csc").label_names)
        assert set(r.pred) == {k for k, p in r.probabilities.items() if p >= threshold}
    gen = evals["cs"]
    assert gen.primary == "rouge_l" and set(gen.metrics) == {"rouge_l", "exact_match"}
    assert all(isinstance(r.pred, str) and r.rouge_l is not None for r in gen.records)


def test_equals_scoring_one_example_at_a_time(engine, evals, suite):
    for task, examples in suite:
        for ex, rec in zip(examples, evals[task.name].records):
            (alone,) = engine.predict([Request(task, ex.input)])
            if task.is_generation:
                assert rec.pred == alone.text
                continue
            expected = alone.labels if task.taxonomy.value == "multilabel" else alone.label
            assert rec.pred == (tuple(expected) if isinstance(expected, tuple) else expected)
            for s in alone.scores:
                assert rec.probabilities[s.label] == pytest.approx(s.probability, abs=1e-5)


def test_evaluate_task_matches_evaluate_many(engine, evals, suite):
    task, examples = suite[2]
    one = evaluate_task(engine, task, examples, batch_size=3, n_resamples=200)
    assert [r.pred for r in one.records] == [r.pred for r in evals[task.name].records]
    assert one.value.value == evals[task.name].value.value


def test_json_round_trip(evals):
    for name in ("see", "csc", "cs"):
        ev = evals[name]
        text = ev.to_json()
        back = TaskEval.from_json(text)
        assert back.to_dict() == ev.to_dict()
        assert json.loads(text)["n"] == ev.n
        # metrics recomputed from the stored records equal the stored ones
        assert back.statistic().value() == pytest.approx(ev.value.value)


def test_engine_errors_are_kept_and_count_as_wrong(engine, hotel):
    tight = dataclasses.replace(hotel.task("rc-a"), max_input_tokens=16)  # no prompt fits
    ev = evaluate_task(engine, tight, [Example("x", call(1), "yes")], n_resamples=50)
    assert ev.errors == 1 and ev.records[0].error and "16" in ev.records[0].error
    assert ev.records[0].pred is None and ev.value.value == 0.0


def test_refuses_empty_and_duplicate_tasks(engine, hotel):
    task = hotel.task("rc-a")
    with pytest.raises(ValidationError, match="at least one example"):
        evaluate_task(engine, task, [])
    ex = [Example("a", call(0), "yes")]
    with pytest.raises(ValidationError, match="once"):
        evaluate_many(engine, [(task, ex), (task, ex)])


# -- bookkeeping without a model ---------------------------------------------------------


def pred(task, label, probs, **kw) -> Prediction:
    scores = tuple(LabelScore(k, v) for k, v in probs.items())
    return Prediction(task=task.name, task_version=None, label=label, labels=kw.pop("labels", (label,)), scores=scores, **kw)


def test_summary_from_hand_made_predictions(hotel):
    ec = hotel.task("ec")
    golds = ["invoice", "invoice", "payment", "other"]
    guesses = ["invoice", "payment", "payment", "invoice"]
    records = [
        record_for(ec, Example(str(i), Text("x"), g), pred(ec, p, {n: (1.0 if n == p else 0.0) for n in ec.label_names}))
        for i, (g, p) in enumerate(zip(golds, guesses))
    ]
    ev = summarize(ec, records, n_resamples=100)
    assert ev.value.value == 0.5
    # invoice: TP1 FP1 FN1 -> 1/2; payment: TP1 FP1 -> 2/3; other: FN1 -> 0 -> macro 7/18
    assert ev.metrics["macro_f1"].value == pytest.approx(7 / 18)
    assert records[0].gold_probability == 1.0 and records[1].gold_probability == 0.0


def test_generation_record(hotel):
    cs = hotel.task("cs")
    p = Prediction(task="cs", task_version=None, label=None, labels=(), scores=(), text="预订被取消")
    rec = record_for(cs, Example("g", call(0), None, "预订被取消了"), p)
    # 5 of 6 characters: R = 5/6, P = 1 -> F = 10/11
    assert rec.rouge_l == pytest.approx(10 / 11) and not rec.correct
