"""What a scoring request and its answer are, without torch: clients (the
CLI over gRPC, batch writers, reports) read predictions without loading a
model runtime.

One answer, one type: the engine returns a `Prediction`; whoever serves it
(the inference service, a batch scorer) wraps it in an `Answer` with the
checkpoint that answered and the time it took. The API floor converts an
Answer to and from protobuf, the batch store turns it into a result row;
nothing else reshapes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mtserve.inputs import Input
from mtserve.tasks import Task

if TYPE_CHECKING:
    from mtserve.errors import MtserveError


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


@dataclass(frozen=True)
class Timing:
    queue_ms: float = 0.0  # waiting for the batch
    compute_ms: float = 0.0  # the batch's forward passes (shared by the whole batch)


@dataclass(frozen=True)
class Answer:
    """A prediction with the checkpoint that answered it and the time it took."""

    prediction: Prediction
    checkpoint_id: str
    timing: Timing = Timing()

    @property
    def key(self) -> tuple[str, int, str]:
        """How a result is stored: (task, task version, checkpoint)."""
        return (self.prediction.task, int(self.prediction.task_version or 0), self.checkpoint_id)


class ScoringBackend(Protocol):
    """What the inference service (its batcher and core) needs of a model
    backend: the local torch `Engine` (mtserve/engine.py) and the TGI
    backend (mtserve/tgi.py) both are one, and an OpenAI-compatible server
    would be one more. Calls are serialized by the caller (tokenizers are
    not thread-safe)."""

    name: str

    def predict(self, requests: Sequence[Request]) -> list[Prediction | MtserveError]:
        """Score a batch; a bad request gets its error in its slot, the others are scored."""
        ...

    def validate_task(self, task: Task) -> None:
        """Refuse (ValidationError) a task this backend cannot serve; run when a route names it."""
        ...
