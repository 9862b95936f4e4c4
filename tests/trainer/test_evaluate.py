"""Evaluation through the serving engine on a tiny random model, and the
record/metric bookkeeping on hand-made predictions."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mtserve.engine import Engine, LabelScore, Prediction, Request
from mtserve.errors import ValidationError
from mtserve.inputs import Conversation, Speaker, Text, Turn
from mtserve.tasks import Channel, parse_catalogue, parse_task
from trainer.data import Example
from trainer.evaluate import (
    ExampleRecord,
    TaskEval,
    Trivial,
    evaluate_many,
    evaluate_task,
    is_degenerate,
    metric_names,
    primary_metric,
    record_for,
    summarize,
    trivial_baseline,
)
from trainer.toy import TOY_CATALOGUE


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


# -- trivial baselines -----------------------------------------------------------------

TOY = parse_catalogue(TOY_CATALOGUE)
RATING = parse_task({
    "name": "rating", "instruction": "Rate the stay from 1 to 4. Answer {labels}.", "input_kind": "text", "taxonomy": "ordinal",
    "channels": ["review"], "labels": [{"name": str(v), "verbalizer": str(v), "value": v} for v in (1, 2, 3, 4)],
})
EXACT_ASPECTS = parse_task({
    "name": "exact_aspects", "instruction": "Which aspects? Answer {labels}.", "input_kind": "text", "taxonomy": "multilabel",
    "channels": ["review"], "labels": ["price", "noise", "view"], "metric": "accuracy",
})


def exs(labels, prefix="t") -> list[Example]:
    return [Example(f"{prefix}{i}", Text(f"Stay {i}.", Channel.REVIEW), label) for i, label in enumerate(labels)]


def test_binary_trivial_is_the_train_majority_scored_on_dev():
    task = TOY.task("sentiment")
    tr = trivial_baseline(task, exs(["negative"] * 6 + ["positive"] * 4), exs(["negative"] * 3 + ["positive"] * 2, "d"))
    assert tr.rule == "majority label of train" and tr.answer == "negative"
    assert tr.eval.checkpoint == "trivial" and tr.eval.split == "dev" and tr.eval.n == 5
    assert [r.pred for r in tr.eval.records] == ["negative"] * 5 and [r.id for r in tr.eval.records] == [f"d{i}" for i in range(5)]
    assert tr.value == pytest.approx(0.6) and tr.eval.metrics["accuracy"].value == pytest.approx(0.6)
    # macro-F1 of a constant answer: negative F1 = 2*3/(2*3+2) = 0.75, positive 0 -> 0.375
    assert tr.eval.metrics["macro_f1"].value == pytest.approx(0.375)
    # the majority is chosen on train, not dev
    tr = trivial_baseline(task, exs(["positive"] * 6 + ["negative"] * 4), exs(["negative"] * 3 + ["positive"] * 2, "d"))
    assert tr.answer == "positive" and tr.value == pytest.approx(0.4)


def test_ties_go_to_the_earlier_label():
    sentiment, topic = TOY.task("sentiment"), TOY.task("topic")  # labels: positive, negative / room, food, staff
    assert trivial_baseline(sentiment, exs(["negative", "positive"] * 5), exs(["negative"], "d")).answer == "positive"
    assert trivial_baseline(topic, exs(["staff"] * 5 + ["food"] * 5 + ["room"] * 2), exs(["staff"], "d")).answer == "food"
    assert trivial_baseline(topic, exs([]), exs(["staff"], "d")).answer == "room"  # no training data: the first label


def test_multiclass_trivial():
    topic = TOY.task("topic")
    tr = trivial_baseline(topic, exs(["room"] * 2 + ["food"] * 3 + ["staff"] * 7), exs(["staff", "staff", "room", "food"], "d"), split="test")
    assert tr.answer == "staff" and tr.value == pytest.approx(0.5) and tr.eval.split == "test"


def test_ordinal_trivial_has_expected_values_and_mae():
    tr = trivial_baseline(RATING, exs(["3"] * 5 + ["4"] * 3 + ["1"]), exs(["1", "3", "4", "3"], "d"))
    assert tr.answer == "3"
    assert [r.expected_value for r in tr.eval.records] == [3.0, 3.0, 3.0, 3.0]
    assert [r.abs_error for r in tr.eval.records] == [2.0, 0.0, 1.0, 0.0]
    assert set(tr.eval.metrics) == {"accuracy", "macro_f1", "mae_expected"}
    assert tr.eval.metrics["mae_expected"].value == pytest.approx(0.75)
    assert tr.value == pytest.approx(0.5)


def test_multilabel_trivial_is_the_best_frequency_prefix():
    aspects = TOY.task("aspects")  # micro-F1
    train = exs([("price",)] * 5 + [("price", "noise")] * 3 + [("view",)] + [()])
    # on train: {} -> 0; {price} -> 16/22 = 0.727; {price, noise} -> 22/32 = 0.6875; all -> 24/42 = 0.571
    dev = exs([("price",), ("price", "noise"), ("view",), ()], "d")
    tr = trivial_baseline(aspects, train, dev)
    assert tr.rule == "best constant label set on train by micro_f1" and tr.answer == ("price",)
    assert [r.pred for r in tr.eval.records] == [("price",)] * 4
    assert [r.correct for r in tr.eval.records] == [True, False, False, False]
    # on dev: TP 2, FP 2, FN 2 -> micro-F1 0.5
    assert tr.value == pytest.approx(0.5)
    # the answer is written in the task's label order, not frequency order
    many = exs([("noise", "view")] * 6 + [("noise",)] * 2 + [("price",)])
    tr = trivial_baseline(aspects, many, dev)
    assert tr.answer == ("noise", "view")


def test_multilabel_trivial_can_be_the_empty_set():
    # exact-set accuracy: most examples have no aspect, so answering none wins
    train = exs([()] * 7 + [("price",)] * 2 + [("noise",)])
    tr = trivial_baseline(EXACT_ASPECTS, train, exs([(), ("price",), ()], "d"))
    assert tr.answer == () and tr.rule == "best constant label set on train by accuracy"
    assert tr.value == pytest.approx(2 / 3)
    # micro-F1 when no training example has a label: the empty set scores 1.0 (nothing to find), any label a false positive
    tr = trivial_baseline(TOY.task("aspects"), exs([()] * 4), exs([(), ("view",)], "d"))
    assert tr.answer == () and tr.value == pytest.approx(0.0)
    assert tr.to_dict()["answer"] == []
    back = Trivial.from_dict(json.loads(json.dumps(tr.to_dict())))
    assert back.answer == () and back.value == tr.value


def test_generation_has_no_trivial_baseline():
    task = TOY.task("headline")
    gen = [Example("g", Text("Stay.", Channel.REVIEW), None, target="lovely stay")]
    tr = trivial_baseline(task, gen, gen)
    assert tr.rule == "not defined for generation tasks" and tr.answer is None and tr.eval is None and tr.value is None
    assert tr.to_dict() == {"rule": "not defined for generation tasks", "answer": None, "eval": None}
    assert Trivial.from_dict(tr.to_dict()) == tr


def test_trivial_round_trips_through_json():
    tr = trivial_baseline(TOY.task("aspects"), exs([("price",)] * 5 + [("price", "noise")] * 3), exs([("price",), ("noise",)], "d"))
    back = Trivial.from_dict(json.loads(json.dumps(tr.to_dict())))
    assert back.rule == tr.rule and back.answer == tr.answer == ("price",)
    assert back.eval.to_dict() == tr.eval.to_dict() and back.value == tr.value


def baseline_eval(task, dev, preds) -> TaskEval:
    records = [ExampleRecord(id=ex.id, gold=ex.gold, pred=p, correct=p == ex.gold) for ex, p in zip(dev, preds)]
    return summarize(task, records, n_resamples=100)


def test_a_baseline_no_better_than_its_trivial_one_is_degenerate():
    task = TOY.task("sentiment")
    dev = exs(["negative"] * 3 + ["positive"] * 2, "d")
    tr = trivial_baseline(task, exs(["negative"] * 6 + ["positive"] * 4), dev)  # 0.6
    constant = baseline_eval(task, dev, ["negative"] * 5)
    assert is_degenerate(constant, tr)  # the same constant answer: equal
    other_way = baseline_eval(task, dev, ["negative", "negative", "positive", "positive", "negative"])  # 0.6 too, by other answers
    assert other_way.value.value == pytest.approx(0.6) and is_degenerate(other_way, tr)
    worse = baseline_eval(task, dev, ["positive"] * 5)  # 0.4
    assert is_degenerate(worse, tr)
    better = baseline_eval(task, dev, ["negative"] * 3 + ["positive", "negative"])  # 0.8
    assert not is_degenerate(better, tr)
    gen_task = TOY.task("headline")
    gen = [Example("g", Text("Stay.", Channel.REVIEW), None, target="lovely stay")]
    no_trivial = trivial_baseline(gen_task, gen, gen)
    rec = [ExampleRecord(id="g", gold="lovely stay", pred="", correct=False, rouge_l=0.0)]
    assert not is_degenerate(summarize(gen_task, rec, n_resamples=50), no_trivial)  # nothing to compare with
