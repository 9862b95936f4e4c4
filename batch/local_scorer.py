"""The local scorer: an Engine over one checkpoint inside the worker process,
with the tasks and truncation policy of a catalogue file. The same core the
inference service runs, so the same input gives the same answer."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.routing import applicable
from batch.scoring import Item, TaskError, TaskRef
from mtserve.errors import MtserveError
from mtserve.predictions import Answer, Timing
from mtserve.tasks import Catalogue, Channel, Task, builtin_catalogue_path, load_catalogue

if TYPE_CHECKING:
    from mtserve.config import Settings


def load_batch_catalogue(settings: Settings) -> Catalogue:
    return load_catalogue(Path(settings.batch.catalogue).expanduser() if settings.batch.catalogue else builtin_catalogue_path("hotel"))


class LocalScorer:
    kind = "local"

    def __init__(self, engine: Any, catalogue: Catalogue, checkpoint_id: str):
        self.engine = engine
        self.catalogue = catalogue
        self.checkpoint_id = checkpoint_id
        self._tasks = {t.name: t for t in catalogue.tasks}
        for task in catalogue.tasks:  # label collisions surface at start, not in the middle of the night
            engine.validate_task(task)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalScorer:
        # torch and transformers are imported here, in the worker process after the fork.
        from mtserve.engine import Engine
        from mtserve.models import resolve_model_path
        from mtserve.serving_precision import load_for_serving

        catalogue = load_batch_catalogue(settings)
        path = resolve_model_path(settings.batch.checkpoint, settings.checkpoints_root)
        # As the inference service loads it: `dtype: auto` is decided by the same measurement, so both answer alike.
        loaded = load_for_serving(path, device=settings.device, dtype=settings.dtype, root=settings.checkpoints_root)
        engine = Engine(
            loaded.model,
            loaded.tokenizer,
            catalogue.truncation,
            max_batch_tokens=settings.inference.max_batch_tokens,
            style=loaded.manifest.prompt_style,
            name=loaded.id,
        )
        return cls(engine, catalogue, loaded.id)

    def tasks(self) -> Mapping[str, Task]:
        return self._tasks

    def plan(self, channel: Channel, selected: frozenset[str] | None) -> list[TaskRef]:
        return [TaskRef(t.name, t.version or 0, self.checkpoint_id) for t in applicable(self.catalogue.tasks, channel, selected)]

    def score(self, items: Sequence[Item]) -> list[list[Answer | TaskError]]:
        from mtserve.engine import Request

        requests = [Request(self._tasks[ref.name], conv) for conv, refs in items for ref in refs]
        started = time.perf_counter()
        predictions = self.engine.predict(requests) if requests else []
        compute_ms = (time.perf_counter() - started) * 1000.0
        out: list[list[Answer | TaskError]] = []
        k = 0
        for _conv, refs in items:
            answers: list[Answer | TaskError] = []
            for ref in refs:
                p = predictions[k]
                k += 1
                if isinstance(p, MtserveError):
                    answers.append(TaskError(ref.name, p))
                else:
                    # Stored under the catalogue's version (0 when it has none), as planned.
                    answers.append(Answer(replace(p, task_version=ref.version), self.checkpoint_id, Timing(compute_ms=compute_ms)))
            out.append(answers)
        return out

    def close(self) -> None:
        self.engine = None
