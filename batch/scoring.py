"""The scorer protocol: what a chunk needs from whatever answers its
conversations. Two implementations: `LocalScorer` (an in-worker engine over a
checkpoint, batch/local_scorer.py) and `GrpcScorer` (the inference service's
ClassifyMany, batch/grpc_scorer.py). Both return the core's `Answer`s
(mtserve/predictions.py), keyed the way results are stored: (task,
task_version, checkpoint).

A scorer is built inside the worker process after the fork (`build_scorer`
in batch/worker.py): it holds torch tensors or a gRPC channel, neither of
which survives a fork.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mtserve.errors import MtserveError
from mtserve.inputs import Conversation
from mtserve.tasks import Channel, Task

if TYPE_CHECKING:
    from mtserve.predictions import Answer


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
