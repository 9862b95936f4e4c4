"""The 99% gate with its paired-bootstrap interval, and the overhead measure."""

from __future__ import annotations

import json
import math
import random

import pytest

from mtserve.errors import NotFoundError, ValidationError
from trainer.evaluate import ExampleRecord, TaskEval, summarize
from trainer.qualify import (
    Qualification,
    Verdict,
    format_overhead,
    num_qualified,
    overhead,
    qualify,
    qualify_all,
    ratio,
)


def make_eval(task, correct: list[bool], ids: list[str] | None = None) -> TaskEval:
    """A binary-task evaluation whose example i is right exactly when correct[i]."""
    ids = ids or [f"e{i}" for i in range(len(correct))]
    records = [ExampleRecord(id=i, gold="yes", pred="yes" if ok else "no", correct=ok) for i, ok in zip(ids, correct)]
    return summarize(task, records, n_resamples=1000, seed=0)


def flips(base: list[bool], n_down: int, n_up: int, seed: int = 0) -> list[bool]:
    """The baseline's answers with n_down right ones made wrong and n_up wrong ones made right."""
    rng = random.Random(seed)
    out = list(base)
    right = [i for i, ok in enumerate(base) if ok]
    wrong = [i for i, ok in enumerate(base) if not ok]
    for i in rng.sample(right, n_down):
        out[i] = False
    for i in rng.sample(wrong, n_up):
        out[i] = True
    return out


@pytest.fixture(scope="module")
def task(hotel):
    return hotel.task("rc-a")


@pytest.fixture(scope="module")
def baseline_answers():
    rng = random.Random(42)
    return [rng.random() < 0.8 for _ in range(2000)]


def test_clear_pass(task, baseline_answers):
    base = make_eval(task, baseline_answers)
    cand = make_eval(task, flips(baseline_answers, 10, 110))  # +5 points
    q = qualify(cand, base)
    assert q.qualified and q.verdict is Verdict.QUALIFIED and not q.within_noise
    assert q.ratio_low >= 0.99 and q.ratio_low <= q.ratio <= q.ratio_high
    assert q.ratio == pytest.approx(cand.value.value / base.value.value)
    assert q.p_pass > 0.99 and "qualified; the whole interval" in q.describe()


def test_clear_fail(task, baseline_answers):
    base = make_eval(task, baseline_answers)
    cand = make_eval(task, flips(baseline_answers, 200, 10))  # -9.5 points
    q = qualify(cand, base)
    assert not q.qualified and q.verdict is Verdict.NOT_QUALIFIED
    assert q.ratio_high < 0.99 and q.p_pass < 0.01
    assert "not qualified; the whole interval is below 0.99" in q.describe()


def test_within_noise_on_either_side_of_the_line(task, baseline_answers):
    base = make_eval(task, baseline_answers)
    # ratio just above 0.99: passes by the point rule, but a re-run could flip it
    above = qualify(make_eval(task, flips(baseline_answers, 30, 25)), base)
    assert above.qualified and above.verdict is Verdict.WITHIN_NOISE
    assert above.ratio_low < 0.99 <= above.ratio_high and 0 < above.p_pass < 1
    assert "qualified by the point estimate, but within noise" in above.describe()
    # ratio just below 0.99: fails the point rule, also within noise
    below = qualify(make_eval(task, flips(baseline_answers, 40, 15)), base)
    assert below.ratio < 0.99 and not below.qualified and below.verdict is Verdict.WITHIN_NOISE
    assert "not qualified by the point estimate" in below.describe()


def test_pairing_narrows_the_interval(task, baseline_answers):
    """Two systems that agree on most examples: the paired interval of their
    ratio is much narrower than their separate intervals suggest."""
    base = make_eval(task, baseline_answers)
    cand = make_eval(task, flips(baseline_answers, 12, 12))  # same accuracy, 24 examples differ
    q = qualify(cand, base)
    assert q.ratio == pytest.approx(1.0)
    separate = (cand.value.high - cand.value.low) / base.value.value
    assert q.ratio_high - q.ratio_low < separate / 2
    same = qualify(base, base)
    assert same.ratio_low == same.ratio_high == 1.0 and same.verdict is Verdict.QUALIFIED


def test_examples_are_aligned_by_id(task, baseline_answers):
    base = make_eval(task, baseline_answers[:300])
    shuffled = list(zip([f"e{i}" for i in range(300)], baseline_answers[:300]))
    random.Random(1).shuffle(shuffled)
    cand = make_eval(task, [ok for _, ok in shuffled], ids=[i for i, _ in shuffled])
    q = qualify(cand, base)
    assert q.ratio_low == q.ratio_high == 1.0  # the same answers, in another order


def test_different_examples_are_refused(task, baseline_answers):
    base = make_eval(task, baseline_answers[:100])
    cand = make_eval(task, baseline_answers[:100], ids=[f"x{i}" for i in range(100)])
    with pytest.raises(ValidationError, match="same examples"):
        qualify(cand, base)


def test_zero_baseline(task):
    zero = make_eval(task, [False] * 50)
    assert qualify(zero, zero).qualified  # 0 >= 0.99 * 0
    some = qualify(make_eval(task, [True] + [False] * 49), zero)
    assert some.qualified and some.ratio == math.inf
    assert ratio(0.0, 0.0) == 1.0
    back = Qualification.from_dict(json.loads(json.dumps(some.to_dict())))
    assert back == some


def test_round_trip_and_qualify_all(task, baseline_answers):
    base = make_eval(task, baseline_answers[:400])
    cand = make_eval(task, flips(baseline_answers[:400], 5, 3))
    q = qualify(cand, base)
    assert Qualification.from_dict(json.loads(json.dumps(q.to_dict()))) == q
    assert qualify_all({"rc-a": cand}, {"rc-a": base})["rc-a"] == q
    with pytest.raises(NotFoundError, match="no single-task baseline"):
        qualify_all({"rc-a": cand}, {})


def test_overhead_as_in_the_paper():
    tasks = ["cwsc", "tnews", "csl", "afqmc", "iflytek", "ocnli"]
    # single-task: one model per task -> 100%
    assert overhead([[t] for t in tasks]) == 1.0 and format_overhead(1.0) == "100.0%"
    # Table 1, ours: 5 qualified tasks on one model -> 20.0%
    assert overhead([tasks[:5]]) == pytest.approx(0.2) and format_overhead(overhead([tasks[:5]])) == "20.0%"
    assert format_overhead(overhead([tasks[:3]])) == "33.3%"
    # few-shot: none qualified -> "-"
    assert overhead([[]]) is None and format_overhead(None) == "-"
    # appendix D (Table 9, SS ours): 5 qualified over two models, at most 3 on one -> 33.3%
    two_models = [["cwsc", "tnews", "iflytek"], ["csl", "afqmc"]]
    assert format_overhead(overhead(two_models)) == "33.3%" and num_qualified(two_models) == 5
    assert num_qualified([[]]) == 0 and num_qualified([[t] for t in tasks]) == 6


def test_a_stale_baseline_is_refused(hotel, baseline_answers):
    import dataclasses

    v1, v2 = (dataclasses.replace(hotel.task("rc-a"), version=v) for v in (1, 2))
    with pytest.raises(ValidationError, match="task version 1"):
        qualify(make_eval(v2, baseline_answers[:50]), make_eval(v1, baseline_answers[:50]))


# -- against a degenerate baseline ---------------------------------------------------------


def test_a_qualification_against_a_degenerate_baseline_says_so(task, baseline_answers):
    base = make_eval(task, baseline_answers)
    cand = make_eval(task, flips(baseline_answers, 10, 110))
    plain = qualify(cand, base)
    q = qualify(cand, base, degenerate_baseline=True)
    assert q.degenerate_baseline and not plain.degenerate_baseline
    assert q.qualified and q.verdict is Verdict.QUALIFIED  # the verdict itself is unchanged
    assert (q.ratio, q.ratio_low, q.ratio_high, q.p_pass) == (plain.ratio, plain.ratio_low, plain.ratio_high, plain.p_pass)
    assert plain.label == "qualified"
    assert q.label == "qualified against a degenerate baseline"
    assert "qualified against a degenerate baseline (it does not beat its trivial baseline); the whole interval" in q.describe()
    assert "degenerate" not in plain.describe()


def test_degenerate_and_within_noise(task, baseline_answers):
    base = make_eval(task, baseline_answers)
    above = qualify(make_eval(task, flips(baseline_answers, 30, 25)), base, degenerate_baseline=True)
    assert above.qualified and above.within_noise
    assert above.label == "qualified against a degenerate baseline, within noise"
    assert "qualified against a degenerate baseline (it does not beat its trivial baseline) by the point estimate, but within noise" in above.describe()
    # not qualified: the label is the plain verdict (a failure says enough)
    below = qualify(make_eval(task, flips(baseline_answers, 40, 15)), base, degenerate_baseline=True)
    assert not below.qualified and below.label == "within noise" and "degenerate" not in below.describe()
    fail = qualify(make_eval(task, flips(baseline_answers, 200, 10)), base, degenerate_baseline=True)
    assert fail.label == "not qualified" and "degenerate" not in fail.describe()


def test_the_degenerate_flag_round_trips_and_old_results_load(task, baseline_answers):
    base = make_eval(task, baseline_answers[:400])
    q = qualify(make_eval(task, flips(baseline_answers[:400], 5, 3)), base, degenerate_baseline=True)
    data = json.loads(json.dumps(q.to_dict()))
    assert data["degenerate_baseline"] is True
    back = Qualification.from_dict(data)
    assert back == q and back.degenerate_baseline and back.label == q.label
    del data["degenerate_baseline"]  # a result written before the flag existed
    old = Qualification.from_dict(data)
    assert old.degenerate_baseline is False and old.label == q.verdict.value
