"""`dtype: auto` when serving: bf16 only where the probe finds bf16 units and
its answers match float32's on the fixed evaluation set (tiny random models;
the CPU probe forced either way with MTSERVE_CPU_BF16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtserve import serving_precision
from mtserve.precision import PROBE_ENV
from mtserve.predictions import LabelScore, Prediction
from mtserve.serving_precision import bf16_answers_match, evaluation_requests, load_for_serving


def answer(p_yes: float) -> Prediction:
    """A binary answer, its scores in label order as the engine gives them."""
    label = "yes" if p_yes >= 0.5 else "no"
    return Prediction(task="t", task_version=1, label=label, labels=(label,), scores=(LabelScore("yes", p_yes), LabelScore("no", 1 - p_yes)))


def weights_dtype(loaded) -> torch.dtype:
    return next(loaded.model.parameters()).dtype


def test_the_criterion_needs_99_percent_same_answers_and_probabilities_within_0_02():
    reference = [answer(0.9)] * 100
    assert bf16_answers_match(reference, [answer(0.915)] * 100)[0]  # moved by 0.015: allowed
    ok, why = bf16_answers_match(reference, [answer(0.925)] * 100)  # by 0.025: refused
    assert not ok and "largest probability difference 0.0250" in why
    near_tie = [answer(0.505)] * 100
    assert bf16_answers_match(near_tie, [answer(0.505)] * 99 + [answer(0.495)])[0]  # one tie broken the other way in 100
    ok, why = bf16_answers_match(near_tie, [answer(0.505)] * 98 + [answer(0.495)] * 2)  # two: below 99%
    assert not ok and "same answer on 98/100" in why


def test_the_evaluation_set_is_fixed_and_covers_every_channel():
    requests = evaluation_requests()
    assert requests == evaluation_requests() and len(requests) >= 20
    assert {r.input.channel.value for r in requests} == {"call", "im", "email", "review"}


def test_a_set_dtype_is_used_as_it_is(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(PROBE_ENV, "1")
    loaded = load_for_serving(tiny_llama_dir, device="cpu", dtype="float32")
    assert weights_dtype(loaded) == torch.float32 and loaded.dtype_reason == "dtype float32 (set)"


def test_auto_without_bf16_units_is_float32(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(PROBE_ENV, "0")
    loaded = load_for_serving(tiny_llama_dir, device="cpu", dtype="auto")
    assert weights_dtype(loaded) == torch.float32 and "no bf16 units" in loaded.dtype_reason


def test_auto_keeps_bf16_only_when_its_answers_match(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(PROBE_ENV, "1")
    monkeypatch.setattr(serving_precision, "MAX_PROB_DIFF", 1.0)
    monkeypatch.setattr(serving_precision, "SAME_ANSWER_SHARE", 0.0)
    loose = load_for_serving(tiny_llama_dir, device="cpu", dtype="auto")
    assert weights_dtype(loose) == torch.bfloat16 and loose.dtype_reason.startswith("dtype auto: bfloat16, its answers match")
    monkeypatch.setattr(serving_precision, "MAX_PROB_DIFF", 0.0)  # bf16 rounding moves some probability by more than 0
    strict = load_for_serving(tiny_llama_dir, device="cpu", dtype="auto")
    assert weights_dtype(strict) == torch.float32 and strict.dtype_reason.startswith("dtype auto: float32, bfloat16 answers differ")
    assert "largest probability difference" in strict.dtype_reason
