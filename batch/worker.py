"""What one worker process holds: its settings, its results-store engine and
its scorer (a loaded model or gRPC channels). Built after the fork by the
`worker_process_init` signal (batch/celery_app.py), so the parent never
loads torch or opens a channel; built lazily on first use where no fork
happens (the solo pool), so a task always finds it.

A scorer that cannot be built (a wrong checkpoint path, say) does not kill
the pool process, which Celery would restart forever: the error is kept,
and every chunk that needs the scorer fails with it, visibly, in
`batch status` and the report (`batch reconcile --retry-failed` once fixed).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from mtserve.errors import MtserveError, PreconditionError

if TYPE_CHECKING:
    from batch.scoring import Scorer
    from batch.store import ResultStore
    from mtserve.config import Settings

log = logging.getLogger(__name__)


class WorkerState:
    def __init__(self, settings: Settings, store: ResultStore, scorer: Scorer | None, name: str):
        self.settings = settings
        self.store = store
        self.name = name
        self._scorer = scorer
        self._lock = threading.Lock()

    @property
    def scorer(self) -> Scorer:
        with self._lock:
            if self._scorer is None:
                try:
                    self._scorer = build_scorer(self.settings)
                except MtserveError as exc:
                    raise PreconditionError(f"worker {self.name} cannot build its {self.settings.batch.scorer} scorer: {exc}") from exc
                except Exception as exc:
                    raise PreconditionError(
                        f"worker {self.name} cannot build its {self.settings.batch.scorer} scorer: {type(exc).__name__}: {exc}"
                    ) from exc
            return self._scorer

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
        self.store.close()


def build_scorer(settings: Settings) -> Scorer:
    """The configured scorer (settings.batch.scorer). Loads a model or opens
    a channel: call it in the worker process, never before the fork."""
    if settings.batch.scorer == "local":
        from batch.local_scorer import LocalScorer

        return LocalScorer.from_settings(settings)
    from batch.grpc_scorer import GrpcScorer

    return GrpcScorer.from_settings(settings)


_state: WorkerState | None = None
_lock = threading.Lock()


def init(settings: Settings) -> WorkerState:
    global _state
    with _lock:
        if _state is None:
            from batch.store import ResultStore

            _state = WorkerState(settings, ResultStore(settings.results_database_url), None, f"{socket.gethostname()}:{os.getpid()}")
            try:
                scorer = _state.scorer
                log.info("worker process %s ready: scorer %s", _state.name, scorer.kind)
            except PreconditionError as exc:
                log.error("%s; chunks will fail with this error until it is fixed", exc)
        return _state


def get(settings: Settings | None = None) -> WorkerState:
    """This process's state, built on first use from `settings` (the Celery
    app's, passed by the task that asks) or the environment's."""
    if _state is not None:
        return _state
    from mtserve.config import load_settings

    return init(settings or load_settings())


def loaded() -> WorkerState | None:
    """The state if this process built one (tests check the parent has none)."""
    return _state


def shutdown() -> None:
    global _state
    with _lock:
        if _state is not None:
            try:
                _state.close()
            finally:
                _state = None
