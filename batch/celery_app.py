"""The Celery app of the batch scorer, configured from mtserve's settings
(defaults < MTSERVE_CONFIG file < MTSERVE_* environment; `mtserve worker`
passes its --config through MTSERVE_CONFIG).

    celery -A batch.celery_app worker -Q mtserve-batch --pool prefork --concurrency 1

(or `mtserve worker`, which runs exactly that with the configured queue and
concurrency). The worker's parent process imports no torch and opens no
gRPC channel: each pool process builds its scorer and its database engine
after the fork, on `worker_process_init` (batch/worker.py). CUDA contexts,
gRPC channels and SQLAlchemy connection pools do not survive a fork.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_shutdown

from batch import worker
from mtserve.config import Settings, load_settings

log = logging.getLogger(__name__)

SCORE_CHUNK = "batch.score_chunk"
FINISH_JOB = "batch.finish_job"
CHORD_FAILED = "batch.chord_failed"


def celery_config(settings: Settings) -> dict[str, Any]:
    b = settings.batch
    transport: dict[str, Any] = {
        # Redis has no acknowledgements: a delivered message waits in an
        # "unacked" hash and goes back to the queue when it has not been acked
        # within this many seconds. It must be longer than the longest chunk
        # (the settings refuse otherwise), or a healthy but slow chunk is
        # handed to a second worker; it is also how soon a chunk held by a
        # SIGKILLed worker comes back.
        "visibility_timeout": b.visibility_timeout,
        # kombu sweeps for such expired messages every interval x throttle
        # seconds (10 x 10 by default); one knob, so the sweep keeps pace
        # with a short visibility timeout.
        "unacked_restore_interval": b.restore_interval,
        "unacked_restore_throttle": 1,
    }
    backend_transport: dict[str, Any] = {}
    if b.key_prefix:
        # One Redis, many deployments (or test runs): every key is prefixed.
        transport["global_keyprefix"] = b.key_prefix
        backend_transport["global_keyprefix"] = b.key_prefix
    return {
        "broker_url": b.broker_url,
        "result_backend": b.result_backend or b.broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": backend_transport,
        # JSON only: a pickled message from the broker would be code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": b.queue,
        # Ack a chunk only after it ran, so a worker that dies mid-chunk does
        # not lose it: the message is redelivered. Safe because chunk tasks
        # are idempotent (results are upserted on their key and a done chunk
        # returns at once).
        "task_acks_late": True,
        # ...and when the pool process running it is killed (OOM, SIGKILL),
        # requeue the message instead of marking the task failed.
        "task_reject_on_worker_lost": True,
        # A chunk that failed for good (bad files, retries exhausted) is acked:
        # it is recorded as failed in the results store, and redelivering it
        # forever would not help. Reconcile decides about running it again.
        "task_acks_on_failure_or_timeout": True,
        # Reserve one chunk per process at a time: chunks are long, and a
        # message sitting in one worker's prefetch buffer can neither go to an
        # idle worker nor stay clear of the visibility timeout.
        "worker_prefetch_multiplier": 1,
        # On a lost broker connection the acks of running chunks would go to a
        # dead channel, so the chunks come back anyway; cancel them at once
        # (their messages return after the visibility timeout) instead of
        # letting them finish into the void.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Keep reconnecting through a Redis restart, however long it takes.
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        # Soft limit: raises inside the chunk, which hands itself back with a
        # retry (what was committed stays). Hard limit: the pool process is
        # killed, for a chunk stuck in native code.
        "task_annotations": {
            SCORE_CHUNK: {"soft_time_limit": b.soft_time_limit, "time_limit": b.chunk_time_limit},
        },
        # Each pool process loads its scorer (a model) in worker_process_init,
        # before it reports up; give it time (see BatchSettings.worker_start_timeout).
        "worker_proc_alive_timeout": b.worker_start_timeout,
        # Chord bookkeeping and chunk summaries only; the results live in the store.
        "result_expires": 7 * 24 * 3600,
    }


def make_app(settings: Settings | None = None) -> Celery:
    """A Celery app for these settings. The worker uses the module's `app`;
    the CLI builds its own from its settings to send tasks (by name)."""
    settings = settings or load_settings()
    app = Celery("mtserve-batch", include=["batch.tasks"])
    app.conf.update(celery_config(settings))
    app.mtserve_settings = settings
    return app


app = make_app()


_metrics_server: Any = None


@worker_init.connect
def _init_worker(**_: Any) -> None:
    # The parent (not a pool process): serve the pool processes' metrics.
    global _metrics_server
    from batch.metrics import serve_worker_metrics

    _metrics_server = serve_worker_metrics(getattr(app, "mtserve_settings", None) or load_settings())


@worker_shutdown.connect
def _shutdown_worker(**_: Any) -> None:
    if _metrics_server is not None:
        _metrics_server.stop()


@worker_process_init.connect
def _init_worker_process(**_: Any) -> None:
    # Runs in each pool process right after the fork, never in the parent.
    settings = getattr(app, "mtserve_settings", None) or load_settings()
    if settings.batch.scorer == "local":  # the model runs here: its pool processes share the cores
        from mtserve.threads import apply_torch_threads

        apply_torch_threads(settings.torch_threads, processes=settings.batch.worker_concurrency or 1, who=f"worker process {os.getpid()}")
    worker.init(settings)


@worker_process_shutdown.connect
def _shutdown_worker_process(**_: Any) -> None:
    worker.shutdown()
