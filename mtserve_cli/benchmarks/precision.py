"""bf16 against float32 scoring: the same requests through engines of the
same checkpoint in float32, in bf16 autocast (float32 weights, bf16
matmuls: what the trainer's `precision: bf16` runs) and with bfloat16
weights, and how far their answers agree with float32's (the criterion
`auto` has to meet)."""

from __future__ import annotations

from typing import Any

from mtserve.precision import answers_agree, cpu_bf16_flags
from mtserve.predictions import Prediction
from mtserve.serving_precision import load_for_serving
from mtserve_cli.benchmarks import workload
from mtserve_cli.benchmarks.harness import Result, alternate, ratio, summaries, timed
from mtserve_cli.benchmarks.workload import BenchConfig

BF16, AUTOCAST, FP32 = "bfloat16 weights", "bf16 autocast, float32 weights", "float32"


def agreement(reference: list[Any], candidate: list[Any]) -> dict[str, Any]:
    """Share of answers with the same label, the largest probability moved,
    and the project's agreement criterion (mtserve.precision.answers_agree)."""
    pairs = [(a, b) for a, b in zip(reference, candidate, strict=True) if isinstance(a, Prediction) and isinstance(b, Prediction)]
    same = sum(a.label == b.label and a.labels == b.labels for a, b in pairs)
    worst = max((abs(x.probability - y.probability) for a, b in pairs for x, y in zip(a.scores, b.scores)), default=0.0)
    ok, why = answers_agree(reference, candidate)
    return {"answers": len(pairs), "same_label_share": same / len(pairs) if pairs else 1.0, "max_probability_diff": worst,
            "answers_agree": ok, "why": why}


def precision(cfg: BenchConfig) -> Result:
    import torch

    cat = workload.catalogue()
    fp32 = workload.engine(workload.load(cfg, "float32"), cfg, cat)
    engines = {FP32: fp32, AUTOCAST: fp32, BF16: workload.engine(workload.load(cfg, "bfloat16"), cfg, cat)}
    requests = [r for reqs in workload.all_tasks_requests(cat, workload.conversations(cfg.n)) for r in reqs]
    answers: dict[str, list[Any]] = {}

    def score(name: str) -> list[Any]:
        with torch.autocast(fp32.device.type, dtype=torch.bfloat16, enabled=name == AUTOCAST):
            return engines[name].predict(requests)

    def arm(name: str) -> float:
        return timed(lambda: answers.__setitem__(name, score(name)))

    for name in engines:
        arm(name)  # warm-up: oneDNN picks its bf16 kernels on the first call
    figures = alternate([(BF16, lambda: arm(BF16)), (AUTOCAST, lambda: arm(AUTOCAST)), (FP32, lambda: arm(FP32))], cfg.repeats)
    # What serving's `dtype: auto` makes of this checkpoint here (it measures bf16 on its own evaluation set).
    auto = load_for_serving(workload.checkpoint_path(cfg), device=cfg.settings.device, dtype="auto", root=cfg.settings.checkpoints_root)
    return Result(
        measure="precision",
        question="scoring time in bf16 / in float32 (the same requests, the same engine code)",
        arms=summaries(figures, "s"),
        ratios=[ratio(figures, BF16, FP32, "lower is better"), ratio(figures, AUTOCAST, FP32, "lower is better")],
        config={"model": fp32.name, "requests": len(requests), "repeats": cfg.repeats, "smoke": cfg.smoke,
                "cpu_bf16_flags": cpu_bf16_flags()},
        details={"agreement_bf16_weights": agreement(answers[FP32], answers[BF16]),
                 "agreement_bf16_autocast": agreement(answers[FP32], answers[AUTOCAST]),
                 "serving_dtype_auto": {"dtype": str(next(auto.model.parameters()).dtype).removeprefix("torch."), "why": auto.dtype_reason}},
    )
