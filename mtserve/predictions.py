"""What a scoring request and its answer are, without torch: clients (the
CLI over gRPC, batch writers, reports) read predictions without loading a
model runtime."""

from __future__ import annotations

from dataclasses import dataclass

from mtserve.inputs import Input
from mtserve.tasks import Task


@dataclass(frozen=True)
class Request:
    task: Task
    input: Input
    truncate: bool = True


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    task: str
    task_version: int | None
    # Single-label tasks: the most probable label. Multi-label: the most
    # probable label too, but read `labels` (the set over the threshold).
    label: str | None
    labels: tuple[str, ...]
    # Single-label: a distribution summing to 1. Multi-label: an independent
    # probability per label.
    scores: tuple[LabelScore, ...]
    expected_value: float | None = None  # ordinal tasks
    text: str | None = None  # generation tasks
    prompt_tokens: int = 0
    truncated: bool = False

    def probability(self, label: str) -> float:
        for s in self.scores:
            if s.label == label:
                return s.probability
        raise KeyError(label)
