"""The gRPC scorer: the inference service's ClassifyMany, one call per
conversation naming the tasks the route table serves for its channel. The
route table decides each task's version and checkpoint; the answer carries
both, and that is the key the result is stored under.

Which tasks apply is decided here, from the service's own view (ModelInfo:
every active task with its routed version and checkpoint, and whether it is
served now) and the registry's definitions of those versions (input kind,
channels, taxonomy), with the same rule as the local scorer
(batch.routing.applicable). Tasks that apply but are not served now (no
route yet, checkpoint not loadable) are left out and logged.

Retries: the channel retries UNAVAILABLE a few times (service config); if
the service stays unavailable or overloaded, the error reaches the chunk
task, which retries the chunk with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from batch.routing import applicable
from batch.scoring import Item, TaskError, TaskRef
from mtserve.errors import MtserveError, OverloadedError, UnavailableError
from mtserve.predictions import Answer
from mtserve.tasks import Channel, Task

if TYPE_CHECKING:
    from mtserve.config import Settings

log = logging.getLogger(__name__)

VIEW_TTL_SECONDS = 10.0  # how long a chunk may use the route view before asking again


def known_tasks(settings: Settings) -> dict[str, Task]:
    """The registry's active tasks (latest versions), to validate --tasks at submit."""
    from mtserve.records import TaskStatus
    from mtserve_api.registry import RegistryClient

    with RegistryClient(settings.inference_registry_address, timeout=settings.registry.client_timeout_seconds, settings=settings) as registry:
        return {r.name: r.task for r in registry.list_tasks(status=TaskStatus.ACTIVE)}


class GrpcScorer:
    kind = "grpc"

    def __init__(self, inference: Any, registry: Any, *, parallel: int = 8, view_ttl: float = VIEW_TTL_SECONDS):
        self.inference = inference
        self.registry = registry
        self.view_ttl = view_ttl
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="classify-many")
        self._definitions: dict[tuple[str, int], Task] = {}  # task versions never change: cached for good
        self._view: dict[str, tuple[Task, str]] = {}
        self._view_at = -1e18
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> GrpcScorer:
        # grpc is imported here, in the worker process after the fork; channels connect lazily.
        from mtserve_api.inference import InferenceClient
        from mtserve_api.registry import RegistryClient

        inference = InferenceClient(settings.batch_inference_address, timeout=settings.inference.client_timeout_seconds, settings=settings)
        registry = RegistryClient(settings.inference_registry_address, timeout=settings.registry.client_timeout_seconds, settings=settings)
        return cls(inference, registry, parallel=settings.batch.conversations_per_call)

    # -- the route view ----------------------------------------------------------------------
    def _definition(self, name: str, version: int) -> Task:
        key = (name, version)
        if key not in self._definitions:
            self._definitions[key] = self.registry.get_task(name, version).task
        return self._definitions[key]

    def view(self) -> Mapping[str, tuple[Task, str]]:
        """{task: (definition of the routed version, checkpoint)} for the tasks served now."""
        with self._lock:
            if time.monotonic() - self._view_at < self.view_ttl:
                return self._view
            info = self.inference.model_info()
            view: dict[str, tuple[Task, str]] = {}
            for t in info.tasks:
                if t.serving:
                    view[t.task] = (self._definition(t.task, t.version), t.checkpoint_id)
                else:
                    log.warning("task %s is not served by the inference service, left out: %s", t.task, t.reason)
            self._view, self._view_at = view, time.monotonic()
            return view

    def tasks(self) -> Mapping[str, Task]:
        return {name: task for name, (task, _) in self.view().items()}

    def plan(self, channel: Channel, selected: frozenset[str] | None) -> list[TaskRef]:
        view = self.view()
        return [
            TaskRef(t.name, int(t.version or 0), view[t.name][1])
            for t in applicable((task for task, _ in view.values()), channel, selected)
        ]

    # -- scoring ------------------------------------------------------------------------------
    def _one(self, item: Item) -> list[Answer | TaskError]:
        conversation, refs = item
        try:
            answers, _skipped = self.inference.classify_many(conversation, [r.name for r in refs])
        except (UnavailableError, OverloadedError):
            raise  # the whole chunk backs off and retries
        except MtserveError as exc:  # this conversation cannot be scored as asked (bad input, a route gone bad)
            return [TaskError(r.name, exc) for r in refs]
        return list(answers)

    def score(self, items: Sequence[Item]) -> list[list[Answer | TaskError]]:
        # Concurrent calls: the service batches them together (and across workers).
        return list(self._pool.map(self._one, items))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.inference.close()
        self.registry.close()
