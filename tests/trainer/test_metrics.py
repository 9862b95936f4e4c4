"""Metric values against hand-computed ones, and their confidence intervals."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from mtserve.errors import ValidationError
from trainer.metrics import (
    Estimate,
    accuracy,
    accuracy_statistic,
    bootstrap_distribution,
    estimate,
    exact_match,
    exact_set_accuracy,
    f1_statistic,
    lcs_length,
    macro_f1,
    mean_exact_match,
    mean_rouge_l,
    micro_f1,
    rouge_l,
    tokenize,
    wilson_interval,
)


def lcs_dp(a, b) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


# -- tokenization and ROUGE-L --------------------------------------------------------


def test_tokenize_cjk_by_character_latin_by_word():
    assert tokenize("我的房间没有了! Hello, World-2 ＡＢＣ café") == ["我", "的", "房", "间", "没", "有", "了", "hello", "world", "2", "abc", "café"]
    assert tokenize("订单123号") == ["订", "单", "123", "号"]  # digits between Han characters stay a word
    assert tokenize("...!!") == []


def test_lcs_matches_dynamic_programming():
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == lcs_dp(a, b)


def test_rouge_l_english_by_hand():
    # ref: the cat sat on the mat (6), cand: the cat on the mat (5); LCS = 5
    # R = 5/6, P = 5/5, F = 2RP/(R+P) = (10/6)/(11/6) = 10/11
    assert rouge_l("The cat sat on the mat.", "the cat on the mat") == pytest.approx(10 / 11)
    # ref: police killed the gunman (4), cand: the gunman police killed (4); LCS = 2 -> F = 0.5
    assert rouge_l("police killed the gunman", "the gunman police killed") == pytest.approx(0.5)


def test_rouge_l_chinese_by_hand():
    # ref 今天天气很好 (6 chars), cand 今天天气不错 (6 chars): LCS 今天天气 = 4
    # R = P = 4/6, F = 2/3. A word-based tool sees no ASCII tokens and scores 0.
    assert rouge_l("今天天气很好", "今天天气不错") == pytest.approx(2 / 3)
    # ref 北京市发布暴雨预警 (9), cand 北京发布预警 (6): LCS 北京发布预警 = 6
    # R = 6/9, P = 1, F = 2*(2/3)/(5/3) = 0.8
    assert rouge_l("北京市发布暴雨预警", "北京发布预警") == pytest.approx(0.8)


def test_rouge_l_edge_cases():
    assert rouge_l("same", "same") == 1.0
    assert rouge_l("text", "") == 0.0
    assert rouge_l("!!", "...") == 1.0  # neither has a token
    assert mean_rouge_l(["a b", "今天"], ["a b", None]) == pytest.approx(0.5)


def test_exact_match_normalises_white_space_only():
    assert exact_match(" a  b\n", "a b") and not exact_match("a b", "A b") and not exact_match("a", None)
    assert mean_exact_match(["x", "y", "z", "w"], ["x", "y", "q", None]) == 0.5


# -- classification metrics ----------------------------------------------------------


def test_accuracy_and_macro_f1_by_hand():
    gold = ["a", "b", "a", "c"]
    pred = ["a", "a", "a", "c"]
    assert accuracy(gold, pred) == 0.75
    # a: TP 2 FP 1 FN 0 -> 4/5; b: TP 0 FN 1 -> 0; c: TP 1 -> 1; mean = 0.6
    assert macro_f1(gold, pred) == pytest.approx(0.6)
    # a class in the label set but absent from gold and prediction does not count
    assert macro_f1(gold, pred, labels=["a", "b", "c", "d"]) == pytest.approx(0.6)
    # single-label micro-F1 equals accuracy
    assert micro_f1(gold, pred) == pytest.approx(0.75)


def test_missing_prediction_counts_as_a_miss():
    assert accuracy(["a", "b"], ["a", None]) == 0.5
    # b: TP 0 FP 0 FN 1 -> 0; a: 1 -> macro 0.5
    assert macro_f1(["a", "b"], ["a", None]) == pytest.approx(0.5)


def test_multilabel_metrics_by_hand():
    gold = [("x",), ("x", "y"), ()]
    pred = [("x",), ("y",), ("z",)]
    # TP: x1 + y1 = 2; FP: z = 1; FN: x (ex 2) = 1 -> micro = 4 / (4 + 1 + 1) = 2/3
    assert micro_f1(gold, pred, labels=["x", "y", "z"]) == pytest.approx(2 / 3)
    # x: TP1 FN1 -> 2/3; y: TP1 -> 1; z: FP1 -> 0 -> macro = 5/9
    assert macro_f1(gold, pred, labels=["x", "y", "z"]) == pytest.approx(5 / 9)
    assert exact_set_accuracy(gold, pred) == pytest.approx(1 / 3)
    assert exact_set_accuracy([("a", "b")], [("b", "a")]) == 1.0


def test_f1_with_nothing_to_find_and_nothing_found_is_perfect():
    assert micro_f1([(), ()], [(), ()], labels=["x"]) == 1.0
    assert macro_f1([(), ()], [(), ()], labels=["x"]) == 1.0


def test_mismatched_lengths_and_empty_sets_are_refused():
    with pytest.raises(ValidationError, match="one per gold"):
        accuracy(["a"], ["a", "b"])
    with pytest.raises(ValidationError, match="at least one example"):
        accuracy([], [])


# -- intervals ---------------------------------------------------------------------


def test_wilson_by_hand():
    # p = 0.8, n = 100, z = 1.96: centre (0.8 + 0.0192) / 1.0384 = 0.7889,
    # half 1.96 / 1.0384 * sqrt(0.0016 + 0.000096) = 0.0777
    lo, hi = wilson_interval(80, 100)
    assert lo == pytest.approx(0.7111, abs=1e-4) and hi == pytest.approx(0.8666, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def correct_vector(n: int, p: float, seed: int = 0) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < p for _ in range(n)]


def test_interval_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (100, 400, 1600):
        correct = correct_vector(n, 0.8)
        est = estimate(accuracy_statistic(correct, [True] * n))
        assert est.low <= est.value <= est.high
        assert est.wilson is not None and est.wilson[0] <= est.value <= est.wilson[1]
        # the bootstrap and Wilson intervals of a proportion agree closely
        assert abs(est.low - est.wilson[0]) < 0.03 and abs(est.high - est.wilson[1]) < 0.03
        widths.append(est.high - est.low)
    assert widths[0] > widths[1] > widths[2]
    # the width shrinks like 1/sqrt(n): quadrupling n halves it (roughly)
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.25)


def test_rouge_and_f1_intervals_contain_estimate():
    rng = random.Random(1)
    refs = ["".join(rng.choice("今天天气很好不错") for _ in range(8)) for _ in range(200)]
    cands = ["".join(rng.choice("今天天气很好不错") for _ in range(8)) for _ in range(200)]
    from trainer.metrics import rouge_l_statistic

    for stat in (rouge_l_statistic(refs, cands), f1_statistic([r[0] for r in refs], [c[0] for c in cands])):
        est = estimate(stat)
        assert est.low <= est.value <= est.high and est.wilson is None


def test_bootstrap_is_seeded_and_deterministic():
    stat = accuracy_statistic(correct_vector(300, 0.7), [True] * 300)
    a = estimate(stat, seed=3)
    assert a == estimate(stat, seed=3)
    assert a != estimate(stat, seed=4)
    (s1,) = bootstrap_distribution([stat], n_resamples=700, seed=3)
    (s2,) = bootstrap_distribution([stat], n_resamples=700, seed=3)
    assert s1.shape == (700,) and np.array_equal(s1, s2)


def test_paired_bootstrap_uses_the_same_resamples():
    correct = correct_vector(200, 0.6)
    stat = accuracy_statistic(correct, [True] * 200)
    first, second = bootstrap_distribution([stat, stat], n_resamples=300, seed=0)
    assert np.array_equal(first, second)  # identical systems: identical resampled values


def test_bootstrap_is_fast():
    import time

    stat = f1_statistic([str(i % 7) for i in range(5000)], [str((i * 3) % 7) for i in range(5000)])
    start = time.perf_counter()
    estimate(stat, n_resamples=1000)
    assert time.perf_counter() - start < 5.0


def test_estimate_round_trips_and_formats():
    est = Estimate(0.8123, 0.79, 0.83, 1000, wilson=(0.78, 0.84))
    assert Estimate.from_dict(est.to_dict()) == est
    assert est.format() == "81.2 (79.0-83.0)"
    assert math.isclose(Estimate.from_dict(est.to_dict()).wilson[1], 0.84)


def test_gold_outside_the_label_set_is_refused():
    with pytest.raises(ValidationError, match="is not one of the labels"):
        macro_f1(["a", "q"], ["a", "a"], labels=["a", "b"])
