"""The scorer protocol: what a chunk needs from whatever answers its
conversations. Two implementations: `LocalScorer` (an in-worker engine over a
checkpoint, batch/local_scorer.py) and `GrpcScorer` (the inference service's
ClassifyMany, batch/grpc_scorer.py). Both return the same `Answer`s, keyed the
way results are stored: (task, task_version, checkpoint).

A scorer is built inside the worker process after the fork (see
batch/worker.py): it holds torch tensors or a gRPC channel, neither of which
survives a fork.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

from mtserve.errors import MtserveError
from mtserve.inputs import Conversation
from mtserve.tasks import Channel, Task

if TYPE_CHECKING:
    from mtserve.config import Settings
    from mtserve.predictions import Prediction


@dataclass(frozen=True)
class TaskRef:
    """A task as it will be answered: name, version and checkpoint. With the
    gRPC scorer the route table decides the last two; locally the catalogue
    (version 0 when it has none) and the configured checkpoint."""

    name: str
    version: int
    checkpoint: str

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.name, self.version, self.checkpoint)


@dataclass(frozen=True)
class Answer:
    task: str
    task_version: int
    checkpoint: str
    label: str | None
    labels: tuple[str, ...]
    scores: Mapping[str, float]  # label -> probability, in the task's label order
    expected_value: float | None = None
    text: str | None = None
    prompt_tokens: int = 0
    truncated: bool = False
    queue_ms: float = 0.0
    compute_ms: float = 0.0

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.task, self.task_version, self.checkpoint)


@dataclass(frozen=True)
class TaskError:
    """One (conversation, task) that could not be answered; the rest of the
    conversation's tasks are still stored."""

    task: str
    error: MtserveError = field(compare=False)


Item = tuple[Conversation, Sequence[TaskRef]]


class Scorer(Protocol):
    kind: str

    def tasks(self) -> Mapping[str, Task]:
        """Definitions of the tasks it can answer (for validation and reports)."""
        ...

    def plan(self, channel: Channel, selected: frozenset[str] | None) -> list[TaskRef]:
        """The tasks a conversation of `channel` is scored on (batch.routing)."""
        ...

    def score(self, items: Sequence[Item]) -> list[list[Answer | TaskError]]:
        """Answers for each conversation, one per TaskRef, in order. Raises
        UnavailableError/OverloadedError when the whole call could not be
        made (the chunk retries with backoff)."""
        ...

    def close(self) -> None: ...


def answer_from_prediction(
    p: "Prediction", checkpoint: str, *, version: int | None = None, queue_ms: float = 0.0, compute_ms: float = 0.0
) -> Answer:
    return Answer(
        task=p.task,
        task_version=int(version if version is not None else (p.task_version or 0)),
        checkpoint=checkpoint,
        label=p.label,
        labels=tuple(p.labels),
        scores={s.label: float(s.probability) for s in p.scores},
        expected_value=p.expected_value,
        text=p.text,
        prompt_tokens=p.prompt_tokens,
        truncated=p.truncated,
        queue_ms=queue_ms,
        compute_ms=compute_ms,
    )


def build_scorer(settings: "Settings") -> Scorer:
    """The configured scorer (settings.batch.scorer). Loads a model or opens
    a channel: call it in the worker process, never before the fork."""
    if settings.batch.scorer == "local":
        from batch.local_scorer import LocalScorer

        return LocalScorer.from_settings(settings)
    from batch.grpc_scorer import GrpcScorer

    return GrpcScorer.from_settings(settings)
