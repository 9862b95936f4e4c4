"""Prometheus metrics of the batch workers: chunks by outcome, conversations
and results scored, task errors, retries and chunk time.

A worker is a Celery parent with pool processes (prefork): each pool process
counts its own chunks, and the parent serves the sum over all of them
(prometheus_client's multiprocess mode). `mtserve worker` gives the worker a
fresh folder for the pool processes' counters (PROMETHEUS_MULTIPROC_DIR, set
before Celery starts, so that every pool process inherits it); the parent
serves them on `batch.metrics_address` with the services' protection (TLS,
an operator token)."""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from mtserve.errors import UnavailableError
from mtserve.metrics_http import MetricsServer, metrics_endpoint

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CHUNKS = Counter("mtserve_worker_chunks", "Chunks ended, by status (done, skipped, failed, retried).", ["status"])
CONVERSATIONS = Counter("mtserve_worker_conversations", "Conversations scored.")
RESULTS = Counter("mtserve_worker_results", "(conversation, task) results written.")
TASK_ERRORS = Counter("mtserve_worker_task_errors", "(conversation, task) pairs that got an error instead of an answer.")
CHUNK_SECONDS = Histogram("mtserve_worker_chunk_seconds", "Wall time of one chunk run.", buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600))


def count_chunk(outcome: Any) -> None:
    """A chunk run's outcome (batch.jobs.ChunkOutcome)."""
    CHUNKS.labels(outcome.status).inc()
    CONVERSATIONS.inc(outcome.conversations)
    RESULTS.inc(outcome.inserted)
    TASK_ERRORS.inc(outcome.errors)
    if outcome.status == "done":
        CHUNK_SECONDS.observe(outcome.seconds)


def count_retry() -> None:
    CHUNKS.labels("retried").inc()


def serve_worker_metrics(settings: Any) -> MetricsServer | None:
    """In the worker's parent: serve the pool processes' metrics (None when
    metrics are off, or when the worker was not started by `mtserve worker`
    and so has no folder to collect from)."""
    endpoint = metrics_endpoint(settings, "batch", settings.batch.metrics_address)
    if endpoint is None:
        return None
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        log.warning("batch worker metrics are off: start workers with `mtserve worker` (it sets %s)", MULTIPROC_ENV)
        return None
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)
    try:
        server = MetricsServer(endpoint, registry).start()
    except UnavailableError as exc:
        # Several workers on one host with the same settings: the first serves,
        # the others say so and score on (their chunks still count nowhere).
        log.error("batch worker metrics are off: %s (give each worker its own batch.metrics_address)", exc)
        return None
    log.info("batch worker metrics on %s://%s:%d/metrics", server.scheme, settings.batch.metrics_address.rpartition(":")[0], server.port)
    return server


__all__ = ["CHUNKS", "CHUNK_SECONDS", "CONVERSATIONS", "MULTIPROC_ENV", "RESULTS", "TASK_ERRORS", "count_chunk", "count_retry",
           "serve_worker_metrics"]
