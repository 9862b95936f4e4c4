"""Which floating-point precision a device runs fast, decided by one probe that
training and serving share.

bfloat16 pays only where the hardware has bf16 matrix units: a CUDA GPU that
reports bf16 support, or a CPU with Intel AMX-BF16 (`amx_bf16` in
/proc/cpuinfo's flags; torch's oneDNN then runs bf16 matmuls on the tile
unit: 557 vs 81 GFLOP/s in float32 on this project's 2-core build machine).
Elsewhere a CPU emulates bf16 and is slower than float32, so `auto` stays at
float32 there.

    auto   bf16 where `bf16_is_fast(device)`, else fp32
    bf16   bf16 autocast wherever asked (allowed everywhere; slow without the units)
    fp32   plain float32

Training always keeps float32 master weights and optimizer state; bf16 means
`torch.autocast(device, torch.bfloat16)` around the forward pass.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
PrecisionSetting = Literal["auto", "fp32", "bf16"]
PRECISION_SETTINGS: tuple[str, ...] = ("auto", "fp32", "bf16")

# Set to 0 or 1 to override the CPU probe (for a machine whose /proc lies, or a test).
PROBE_ENV = "MTSERVE_CPU_AMX_BF16"


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


def cpu_has_amx_bf16() -> bool:
    """True when this CPU has AMX-BF16 tile units (or MTSERVE_CPU_AMX_BF16=1)."""
    forced = os.environ.get(PROBE_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return "amx_bf16" in _cpuinfo_flags()


def bf16_is_fast(device: torch.device) -> bool:
    """The one capability probe: does bf16 beat float32 on this device?"""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_amx_bf16()
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
    source = f"{PROBE_ENV}={forced}" if forced in ("0", "1") else "/proc/cpuinfo"
    return f"cpu amx_bf16: {cpu_has_amx_bf16()} ({source})"


def autocast_dtype(precision: Precision) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16" else None


__all__ = [
    "PRECISION_SETTINGS",
    "PROBE_ENV",
    "Precision",
    "PrecisionSetting",
    "autocast_dtype",
    "bf16_is_fast",
    "cpu_has_amx_bf16",
    "probe_description",
    "resolve_precision",
]
