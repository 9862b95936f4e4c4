"""`dtype: auto` when serving: bfloat16 only where it is fast *and* answers as
float32 does, decided by measuring, at load, per checkpoint.

Fast comes from the probe the trainer uses (`mtserve.precision.bf16_is_fast`:
a GPU with bf16, a CPU with AMX-BF16 or AVX512-BF16). Fast is not enough: an
answer here is a probability, and bf16 keeps 8 bits of mantissa. So where the
probe says yes, `auto` loads the checkpoint in float32, scores a fixed
evaluation set (every classification task of the built-in hotel catalogue on
the bundled samples, mtserve/samples/), scores it again with a bfloat16 copy
of the weights, and keeps bf16 only when

    the same answer (label, and label set for multi-label tasks) comes back
    on at least SAME_ANSWER_SHARE of the evaluation set, and
    no label probability moves by more than MAX_PROB_DIFF;

otherwise it serves the float32 weights it loaded. Without bf16 units `auto`
is what it always was (mtserve.models.resolve_dtype: float32 on a CPU,
float16 on a GPU without bf16). The choice and its measured reason travel with
the loaded model (`LoadedModel.dtype_reason`): the inference service logs
them and reports them in ModelInfo.

The 1e-5 batch-invariance the engine's tests check holds in float32; a bf16
model answers within the tolerance above, by this very check.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtserve.engine import Engine, Request
from mtserve.inputs import input_from_dict
from mtserve.models import LoadedModel, load_checkpoint, resolve_device
from mtserve.precision import bf16_is_fast, probe_description
from mtserve.predictions import Prediction
from mtserve.tasks import Catalogue, builtin_catalogue_path, load_catalogue

log = logging.getLogger(__name__)

SAME_ANSWER_SHARE = 0.99
MAX_PROB_DIFF = 0.02
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def evaluation_catalogue() -> Catalogue:
    return load_catalogue(builtin_catalogue_path("hotel"))


def evaluation_requests() -> list[Request]:
    """The fixed evaluation set: every classification task of the hotel
    catalogue that applies to each bundled sample (sorted by file name)."""
    catalogue = evaluation_catalogue()
    requests = []
    for path in sorted(SAMPLES_DIR.glob("*.json")):
        inp = input_from_dict(json.loads(path.read_text(encoding="utf-8")), path.stem)
        channel = getattr(inp, "channel", None)
        requests += [Request(t, inp) for t in catalogue.tasks if not t.is_generation and t.applies_to(inp.kind, channel)]
    return requests


def bf16_answers_match(reference: Sequence[Any], candidate: Sequence[Any]) -> tuple[bool, str]:
    """The criterion: the same answer on at least SAME_ANSWER_SHARE of the
    answers and every label probability within MAX_PROB_DIFF. Returns
    (matches, what was measured)."""
    pairs = [(a, b) for a, b in zip(reference, candidate, strict=True) if isinstance(a, Prediction) and isinstance(b, Prediction)]
    if len(pairs) != len(reference):
        return False, f"{len(reference) - len(pairs)} of {len(reference)} evaluation answers failed"
    same = sum(a.label == b.label and tuple(a.labels) == tuple(b.labels) for a, b in pairs)
    worst = 0.0
    for a, b in pairs:
        theirs = {s.label: s.probability for s in b.scores}
        worst = max([worst, *(abs(s.probability - theirs.get(s.label, 0.0)) for s in a.scores)])
    share = same / len(pairs) if pairs else 1.0
    measured = (f"same answer on {same}/{len(pairs)} evaluation answers ({share:.1%}; needs {SAME_ANSWER_SHARE:.0%}), "
                f"largest probability difference {worst:.4f} (allowed {MAX_PROB_DIFF})")
    return share >= SAME_ANSWER_SHARE and worst <= MAX_PROB_DIFF, measured


def load_for_serving(folder: str | Path, *, device: str = "auto", dtype: str = "auto", root: str | Path | None = None) -> LoadedModel:
    """load_checkpoint, with `auto` decided as the module docstring says; the
    returned model's `dtype_reason` says what was chosen and why."""
    dev = resolve_device(device)
    if dtype != "auto":
        loaded = load_checkpoint(folder, device=device, dtype=dtype, root=root)
        loaded.dtype_reason = f"dtype {dtype} (set)"
        return loaded
    if not bf16_is_fast(dev):
        loaded = load_checkpoint(folder, device=device, dtype="auto", root=root)
        loaded.dtype_reason = f"dtype auto: {_dtype_name(loaded.model)}, no bf16 units ({probe_description(dev)})"
        return loaded
    loaded = load_checkpoint(folder, device=device, dtype="float32", root=root)
    matches, measured = _compare_bf16(loaded)
    if matches is not None:
        loaded.model = matches
        loaded.dtype_reason = f"dtype auto: bfloat16, its answers match float32's ({measured})"
    else:
        loaded.dtype_reason = f"dtype auto: float32, bfloat16 answers differ ({measured})"
    return loaded


def _compare_bf16(loaded: LoadedModel) -> tuple[Any | None, str]:
    """Score the evaluation set in float32 and with a bfloat16 copy; returns
    (the bf16 model when it matches, else None; what was measured)."""
    requests, policy = evaluation_requests(), evaluation_catalogue().truncation
    style = loaded.manifest.prompt_style
    reference = Engine(loaded.model, loaded.tokenizer, policy, style=style).predict(requests)
    bf16 = copy.deepcopy(loaded.model).to(torch.bfloat16)
    candidate = Engine(bf16, loaded.tokenizer, policy, style=style).predict(requests)
    ok, measured = bf16_answers_match(reference, candidate)
    log.info("checkpoint %s: bfloat16 vs float32 on the evaluation set: %s", loaded.id, measured)
    return (bf16 if ok else None), measured


def _dtype_name(model: Any) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


__all__ = ["MAX_PROB_DIFF", "SAME_ANSWER_SHARE", "bf16_answers_match", "evaluation_requests", "load_for_serving"]
