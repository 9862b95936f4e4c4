"""The one precision probe (mtserve.precision): `auto` follows the CPU's bf16
units (or MTSERVE_CPU_BF16), explicit settings pass through, and the
agreement rule by which bf16 answers may replace float32 ones."""

from __future__ import annotations

import pytest
import torch

from mtserve import precision
from mtserve.errors import ValidationError
from mtserve.precision import (
    AGREEMENT_MAX_PROB_DIFF,
    PROBE_ENV,
    answers_agree,
    autocast_dtype,
    bf16_is_fast,
    cpu_bf16_flags,
    cpu_has_bf16_units,
    probe_description,
    resolve_precision,
)
from mtserve.predictions import LabelScore, Prediction

CPU = torch.device("cpu")


def flags(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Pretend /proc/cpuinfo lists `names` (plus some unrelated flags); no env override."""
    monkeypatch.delenv(PROBE_ENV, raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda path="/proc/cpuinfo": frozenset({"fpu", "sse2", "avx2", *names}))


# -- the probe ----------------------------------------------------------------------


@pytest.mark.parametrize("names", [("avx512_bf16",), ("amx_bf16",), ("amx_bf16", "avx512_bf16")])
def test_auto_is_bf16_when_the_cpu_has_bf16_units(monkeypatch, names):
    flags(monkeypatch, *names)
    assert cpu_bf16_flags() == sorted(names)
    assert cpu_has_bf16_units() and bf16_is_fast(CPU)
    assert resolve_precision("auto", CPU) == "bf16"
    assert probe_description(CPU) == f"cpu bf16 units: True (/proc/cpuinfo flags {sorted(names)})"


def test_auto_is_fp32_without_bf16_units(monkeypatch):
    flags(monkeypatch, "avx512f", "avx512_vnni", "amx_int8")  # near misses are not bf16 units
    assert cpu_bf16_flags() == []
    assert not cpu_has_bf16_units() and not bf16_is_fast(CPU)
    assert resolve_precision("auto", CPU) == "fp32"
    assert probe_description(CPU) == "cpu bf16 units: False (/proc/cpuinfo flags none)"


def test_the_environment_overrides_the_cpu_flags(monkeypatch):
    flags(monkeypatch)  # no bf16 flags...
    monkeypatch.setenv(PROBE_ENV, "1")  # ...but forced on
    assert resolve_precision("auto", CPU) == "bf16"
    assert probe_description(CPU) == f"cpu bf16 units: True ({PROBE_ENV}=1)"
    flags(monkeypatch, "avx512_bf16", "amx_bf16")  # bf16 flags...
    monkeypatch.setenv(PROBE_ENV, "0")  # ...but forced off
    assert resolve_precision("auto", CPU) == "fp32"
    assert probe_description(CPU) == f"cpu bf16 units: False ({PROBE_ENV}=0)"
    monkeypatch.setenv(PROBE_ENV, "yes")  # anything but 0/1 is ignored: the flags decide
    assert resolve_precision("auto", CPU) == "bf16"


def test_explicit_settings_pass_through_whatever_the_probe(monkeypatch):
    for forced in ("0", "1"):
        monkeypatch.setenv(PROBE_ENV, forced)
        assert resolve_precision("fp32", CPU) == "fp32"
        assert resolve_precision("bf16", CPU) == "bf16"
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp32") is None


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", "float32"])
def test_a_bad_setting_names_the_field(bad):
    with pytest.raises(ValidationError) as info:
        resolve_precision(bad, CPU)
    assert info.value.field == "precision"
    assert str(info.value).startswith("precision: must be auto, fp32 or bf16")


def test_other_devices_are_never_fast():
    assert not bf16_is_fast(torch.device("meta"))


def test_cpuinfo_parsing(tmp_path):
    parse = precision._cpuinfo_flags.__wrapped__  # the uncached function: the cache holds /proc's answer
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx512_bf16 avx512f\n\nprocessor\t: 1\nflags\t: other\n")
    assert parse(str(x86)) == frozenset({"fpu", "sse2", "avx512_bf16", "avx512f"})  # the first CPU's line
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert parse(str(arm)) == frozenset({"fp", "asimd", "bf16"})
    assert parse(str(tmp_path / "missing")) == frozenset()
    (tmp_path / "empty").write_text("processor: 0\n")
    assert parse(str(tmp_path / "empty")) == frozenset()


# -- agreement between precisions ---------------------------------------------------------


def pred(label: str | None, probs: dict[str, float] | None = None, *, labels: tuple[str, ...] | None = None, text: str | None = None,
         task: str = "sentiment") -> Prediction:
    probs = probs or {}
    return Prediction(
        task=task, task_version=1, label=label, labels=labels if labels is not None else ((label,) if label else ()),
        scores=tuple(LabelScore(k, v) for k, v in probs.items()), text=text,
    )


REFERENCE = [
    pred("positive", {"positive": 0.7, "negative": 0.3}),
    pred("negative", {"positive": 0.2, "negative": 0.8}),
    pred("price", {"price": 0.9, "noise": 0.6, "view": 0.1}, labels=("price", "noise"), task="aspects"),
    pred(None, text="lovely bed stay", task="headline"),
]


def test_identical_answers_agree():
    ok, why = answers_agree(REFERENCE, list(REFERENCE))
    assert ok and why.startswith("all 4 answers agree (largest probability difference 0.0000")
    assert "0 near tie(s)" in why


def test_a_different_label_disagrees_and_names_the_answer():
    other = list(REFERENCE)
    other[1] = pred("positive", {"positive": 0.51, "negative": 0.49})  # a confident answer turned round
    ok, why = answers_agree(REFERENCE, other)
    assert not ok and why.startswith("answer 1 (sentiment): ")


def test_a_label_flip_is_allowed_only_on_a_near_tie():
    ref = [REFERENCE[1], pred("positive", {"positive": 0.53, "negative": 0.47})]
    # probabilities within 0.05, but the reference's margin (0.06) was no tie: disagree
    ok, why = answers_agree(ref, [REFERENCE[1], pred("negative", {"positive": 0.495, "negative": 0.505})])
    assert not ok and why == "answer 1 (sentiment): 'positive' vs 'negative' (reference margin 0.0600)"
    # a 0.52/0.48 near tie may break either way
    ref = [REFERENCE[1], pred("positive", {"positive": 0.52, "negative": 0.48})]
    ok, why = answers_agree(ref, [REFERENCE[1], pred("negative", {"positive": 0.49, "negative": 0.51})])
    assert ok and why.startswith("all 2 answers agree (largest probability difference 0.0300") and "1 near tie(s)" in why


def test_a_different_label_set_or_text_disagrees():
    other = list(REFERENCE)
    other[2] = pred("price", {"price": 0.9, "noise": 0.4, "view": 0.1}, labels=("price",), task="aspects")
    ok, why = answers_agree(REFERENCE, other)
    assert not ok and why.startswith("answer 2 (aspects)")
    other = list(REFERENCE)
    other[3] = pred(None, text="lovely bed", task="headline")
    ok, why = answers_agree(REFERENCE, other)
    assert not ok and why.startswith("answer 3 (headline)") and "'lovely bed'" in why


def test_probabilities_may_move_by_at_most_five_points():
    assert AGREEMENT_MAX_PROB_DIFF == 0.05
    moved = list(REFERENCE)
    moved[0] = pred("positive", {"positive": 0.64, "negative": 0.36})  # 0.06: too far
    ok, why = answers_agree(REFERENCE, moved)
    assert not ok and why == "answer 0 (sentiment): p(positive) 0.7000 vs 0.6400"
    moved[0] = pred("positive", {"positive": 0.66, "negative": 0.34})  # 0.04: fine
    ok, why = answers_agree(REFERENCE, moved)
    assert ok and why.startswith("all 4 answers agree (largest probability difference 0.0400")
    ok, _ = answers_agree(REFERENCE, moved, max_prob_diff=0.03)  # the limit is a parameter
    assert not ok


def test_a_label_missing_from_the_candidate_counts_as_probability_zero():
    ref = [pred("positive", {"positive": 0.97, "negative": 0.03})]
    ok, why = answers_agree(ref, [pred("positive", {"positive": 0.97})])
    assert ok  # 0.03 vs 0
    ref = [pred("positive", {"positive": 0.9, "negative": 0.1})]
    ok, why = answers_agree(ref, [pred("positive", {"positive": 0.9})])
    assert not ok and why == "answer 0 (sentiment): p(negative) 0.1000 vs 0.0000"


def test_lengths_and_failures():
    ok, why = answers_agree(REFERENCE, REFERENCE[:3])
    assert not ok and why == "4 reference answers vs 3"
    boom = ValueError("too long")
    ok, _ = answers_agree([boom, REFERENCE[0]], [ValueError("too long"), REFERENCE[0]])
    assert ok  # both precisions refused the same request
    ok, why = answers_agree([REFERENCE[0], boom], [REFERENCE[0], REFERENCE[1]])
    assert not ok and why.startswith("answer 1: one precision failed")


# -- the override and the settings loader ------------------------------------------------------


def test_the_probe_override_is_not_an_unknown_setting(monkeypatch):
    """MTSERVE_CPU_BF16 shares the MTSERVE_ prefix that load_settings reads as
    settings: with it set, every command that loads settings (the CLI, run_job
    without settings=, the services) must still start."""
    from mtserve.config import load_settings

    monkeypatch.setenv(PROBE_ENV, "1")
    assert resolve_precision("auto", CPU) == "bf16"
    load_settings()  # today: ValidationError "cpu_bf16: unknown setting (from environment variable MTSERVE_CPU_BF16)"


def test_a_label_set_may_differ_only_at_its_threshold():
    ref = [pred("price", {"price": 0.9, "noise": 0.52, "view": 0.1}, labels=("price", "noise"), task="aspects")]
    near = [pred("price", {"price": 0.9, "noise": 0.48, "view": 0.1}, labels=("price",), task="aspects")]
    ok, why = answers_agree(ref, near)
    assert ok and "1 near tie(s)" in why
    far = [pred("price", {"price": 0.9, "noise": 0.3, "view": 0.1}, labels=("price",), task="aspects")]
    ok, why = answers_agree(ref, far)
    assert not ok and why == "answer 0 (aspects): p(noise) 0.5200 vs 0.3000"
