"""Which floating-point precision a device runs fast, decided by one probe that
training and serving share.

bfloat16 pays only where the hardware has bf16 dot-product instructions: a
CUDA GPU that reports bf16 support, or a CPU whose /proc/cpuinfo flags name
Intel AMX-BF16 (`amx_bf16`, the tile unit) or AVX512-BF16 (`avx512_bf16`,
Intel Cooper Lake and later, AMD Zen 4 and later); torch's oneDNN uses either
for bf16 matmuls. Measured with torch 2.13 at 2 threads, a 1280x576 @ 576x1536
matmul: 81 vs 557 GFLOP/s (float32 vs bf16) on an AMX machine, 59 vs 261 on
this project's AMD EPYC build machine (AVX512-BF16). Elsewhere a CPU emulates
bf16 and is slower than float32, so `auto` stays at float32 there.

    auto   bf16 where `bf16_is_fast(device)`, else fp32
    bf16   bf16 autocast wherever asked (allowed everywhere; slow without the units)
    fp32   plain float32

Training always keeps float32 master weights and optimizer state; bf16 means
`torch.autocast(device, torch.bfloat16)` around the forward pass.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

Precision = Literal["fp32", "bf16"]
PrecisionSetting = Literal["auto", "fp32", "bf16"]
PRECISION_SETTINGS: tuple[str, ...] = ("auto", "fp32", "bf16")

# Set to 0 or 1 to override the CPU probe (for a machine whose /proc lies, or a test).
PROBE_ENV = "MTSERVE_CPU_BF16"
CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_flags() -> list[str]:
    """The bf16 instruction sets this CPU reports (sorted; empty: none)."""
    return sorted(CPU_BF16_FLAGS & _cpuinfo_flags())


def cpu_has_bf16_units() -> bool:
    """True when this CPU has AMX-BF16 or AVX512-BF16 (or MTSERVE_CPU_BF16=1)."""
    forced = os.environ.get(PROBE_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return bool(cpu_bf16_flags())


def bf16_is_fast(device: torch.device) -> bool:
    """The one capability probe: does bf16 beat float32 on this device?"""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_bf16_units()
    return False


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """`auto` | `fp32` | `bf16` -> the precision a run on `device` uses."""
    if setting == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    if setting in ("fp32", "bf16"):
        return setting  # type: ignore[return-value]
    from mtserve.errors import ValidationError

    raise ValidationError("precision", "must be auto, fp32 or bf16", setting)


def probe_description(device: torch.device) -> str:
    """What the probe saw, for manifests and logs."""
    if device.type == "cuda":
        return f"cuda bf16 supported: {bf16_is_fast(device)}"
    forced = os.environ.get(PROBE_ENV)
    source = f"{PROBE_ENV}={forced}" if forced in ("0", "1") else f"/proc/cpuinfo flags {cpu_bf16_flags() or 'none'}"
    return f"cpu bf16 units: {cpu_has_bf16_units()} ({source})"


def autocast_dtype(precision: Precision) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None


# Two precisions "agree" on a batch of answers when no label's probability
# moves by more than this, and an answer names another label only where the
# reference itself was a near tie (its top label ahead of that label by at most
# this much). bf16 keeps 8 bits of mantissa: on the default model every hotel
# task on every sample moved by at most 0.028, and the four answers that flipped
# were ties such as 0.494/0.506 (tests/mtserve/test_default_model.py).
AGREEMENT_MAX_PROB_DIFF = 0.05


def answers_agree(reference: Sequence[Any], candidate: Sequence[Any], *, max_prob_diff: float = AGREEMENT_MAX_PROB_DIFF) -> tuple[bool, str]:
    """The criterion by which a lower precision may replace float32: every
    label probability within `max_prob_diff`, and every answer the same label
    except where the reference's margin over the candidate's label is within
    `max_prob_diff` (a near tie, which any rounding may break either way; a
    multi-label set can then only differ on labels at its threshold).
    Answers are `mtserve.predictions.Prediction`s (duck-typed: `.task`,
    `.label`, `.labels`, `.scores`, `.text`). Returns (agree, why)."""
    if len(reference) != len(candidate):
        return False, f"{len(reference)} reference answers vs {len(candidate)}"
    worst, ties = 0.0, 0
    for i, (a, b) in enumerate(zip(reference, candidate)):
        if isinstance(a, Exception) or isinstance(b, Exception):
            if type(a) is not type(b):
                return False, f"answer {i}: one precision failed ({a!r} vs {b!r})"
            continue
        if a.text != b.text:
            return False, f"answer {i} ({a.task}): generated {a.text!r} vs {b.text!r}"
        pa = {s.label: s.probability for s in a.scores}
        pb = {s.label: s.probability for s in b.scores}
        for label, p in pa.items():
            diff = abs(p - pb.get(label, 0.0))
            worst = max(worst, diff)
            if diff > max_prob_diff:
                return False, f"answer {i} ({a.task}): p({label}) {p:.4f} vs {pb.get(label, 0.0):.4f}"
        if a.label != b.label or tuple(a.labels) != tuple(b.labels):
            margin = pa.get(a.label, 0.0) - pa.get(b.label, 0.0) if a.label is not None else 0.0
            if margin > max_prob_diff:
                return False, f"answer {i} ({a.task}): {a.label!r} vs {b.label!r} (reference margin {margin:.4f})"
            ties += 1
    return True, (f"all {len(reference)} answers agree (largest probability difference {worst:.4f}; "
                  f"{ties} near tie(s) broken the other way)")


__all__ = [
    "AGREEMENT_MAX_PROB_DIFF",
    "CPU_BF16_FLAGS",
    "PRECISION_SETTINGS",
    "PROBE_ENV",
    "Precision",
    "PrecisionSetting",
    "answers_agree",
    "autocast_dtype",
    "bf16_is_fast",
    "cpu_bf16_flags",
    "cpu_has_bf16_units",
    "probe_description",
    "resolve_precision",
]
