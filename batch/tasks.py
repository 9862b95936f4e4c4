"""The Celery tasks: thin. They take their arguments, call the plain
functions of batch/jobs.py with this process's store and scorer, and decide
about retries. Everything they do is tested without Celery in tests/batch/."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import OperationalError

from batch import jobs, metrics, worker
from batch.celery_app import CHORD_FAILED, FINISH_JOB, SCORE_CHUNK
from mtserve.errors import MtserveError, OverloadedError, UnavailableError

log = logging.getLogger(__name__)

# The inference service is down or draining (UNAVAILABLE), overloaded
# (RESOURCE_EXHAUSTED), or the results database is briefly unreachable: the
# chunk is worth trying again later.
TRANSIENT = (UnavailableError, OverloadedError, OperationalError)


def backoff(retries: int, cap: float) -> int:
    """Exponential backoff with full jitter, Celery's own (the one its
    `retry_backoff`/`retry_jitter` use): a whole number of seconds drawn
    uniformly from 0..min(cap, 2**retries)."""
    return get_exponential_backoff_interval(factor=1, retries=retries, maximum=int(cap), full_jitter=True)


def _enqueuer(app: Any) -> jobs.Enqueuer:
    from batch.dispatch import CeleryEnqueuer

    return CeleryEnqueuer(app)


@shared_task(bind=True, name=SCORE_CHUNK)
def score_chunk(self: Any, job_id: str, chunk: dict[str, Any]) -> dict[str, Any]:
    state = worker.get(getattr(self.app, "mtserve_settings", None))
    b = state.settings.batch
    index = int(chunk["index"])
    try:
        outcome = jobs.run_chunk(
            state.store,
            state.scorer,
            job_id,
            chunk,
            worker=f"{state.name}/{self.request.hostname}",
            group_size=b.conversations_per_call,
            pause=b.debug_pause_seconds,
        )
        metrics.count_chunk(outcome)
        return outcome.to_dict()
    except (SoftTimeLimitExceeded, *TRANSIENT) as exc:
        reason = "soft time limit reached" if isinstance(exc, SoftTimeLimitExceeded) else f"{type(exc).__name__}: {exc}"
        if self.request.retries >= b.max_retries:
            log.error("job %s chunk %d: giving up after %d retries: %s", job_id, index, self.request.retries, reason)
            _fail(state, job_id, index, f"gave up after {self.request.retries} retries: {reason}")
            failed = jobs.ChunkOutcome(job_id, index, "failed", error=reason)
            metrics.count_chunk(failed)
            return failed.to_dict()
        # Committed groups stay; the retry scores what is left. A time limit
        # retries at once, a transient error after a jittered backoff.
        countdown = 0.0 if isinstance(exc, SoftTimeLimitExceeded) else backoff(self.request.retries, b.retry_backoff_max)
        log.warning("job %s chunk %d: %s; retry %d in %.1fs", job_id, index, reason, self.request.retries + 1, countdown)
        _fail(state, job_id, index, reason, final=False)
        metrics.count_retry()
        raise self.retry(countdown=countdown, max_retries=b.max_retries) from None
    except MtserveError as exc:
        # Files changed since planning, a job that does not exist...: retrying
        # gives the same answer. Recorded; the report lists it.
        log.error("job %s chunk %d failed: %s", job_id, index, exc)
        _fail(state, job_id, index, str(exc))
        failed = jobs.ChunkOutcome(job_id, index, "failed", error=str(exc))
        metrics.count_chunk(failed)
        return failed.to_dict()


def _fail(state: worker.WorkerState, job_id: str, index: int, error: str, *, final: bool = True) -> None:
    try:
        state.store.fail_chunk(job_id, index, error, final=final)
    except OperationalError:  # the database is the thing that is down: the status stays as it was
        log.exception("could not record the failure of job %s chunk %d", job_id, index)


@shared_task(bind=True, name=FINISH_JOB)
def finish_job(self: Any, results: Any = None, job_id: str = "") -> str:
    """The chord callback (`results` are the chunk summaries; the store, not
    they, decides what is complete)."""
    state = worker.get(getattr(self.app, "mtserve_settings", None))
    return jobs.finish_job(state.store, _enqueuer(self.app), state.settings, job_id, _definitions(state))


def _definitions(state: worker.WorkerState) -> Any:
    """Task definitions for the report; without a scorer the report still
    comes out, with the taxonomies it cannot know marked unknown."""
    try:
        return state.scorer.tasks()
    except MtserveError as exc:
        log.error("report without task definitions: %s", exc)
        return {}


@shared_task(bind=True, name=CHORD_FAILED)
def chord_failed(self: Any, request: Any = None, exc: Any = None, traceback: Any = None, job_id: str = "") -> str:
    """Errback of the chord's callback: a chunk task failed outright, so the
    chord will not call finish_job; run the same completeness check."""
    log.warning("job %s: a chunk task failed (%s); reconciling", job_id, exc)
    state = worker.get(getattr(self.app, "mtserve_settings", None))
    return jobs.finish_job(state.store, _enqueuer(self.app), state.settings, job_id, _definitions(state))
