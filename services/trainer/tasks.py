"""The train queue's one task: thin. It builds this process's job store on
first use (after the fork: SQLAlchemy pools do not survive one), calls
services.trainer.runner.run_job, and turns "another worker runs this job"
into a retry later. Everything it does is tested without Celery in
tests/services/test_trainer_runner.py."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import shared_task

from services.trainer import runner
from services.trainer.celery_app import RUN_JOB
from services.trainer.store import JobStore

log = logging.getLogger(__name__)

_store: tuple[int, JobStore] | None = None
_lock = threading.Lock()


def _process_store(settings: Any) -> JobStore:
    global _store
    with _lock:
        if _store is None or _store[0] != os.getpid():
            _store = (os.getpid(), JobStore(settings.trainer_database_url))
        return _store[1]


# max_retries=None: a "busy" delivery retries for as long as the job trains elsewhere (see below).
@shared_task(bind=True, name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=None)
def run_job(self: Any, job_id: str) -> str:
    from mtserve.config import load_settings

    settings = getattr(self.app, "mtserve_settings", None) or load_settings()
    cfg = runner.WorkerConfig.from_settings(settings, f"{self.request.hostname}/{os.getpid()}")
    try:
        return runner.run_job(_process_store(settings), job_id, cfg)
    except runner.Busy as busy:
        # A redelivery of a job that trains elsewhere: look again when its
        # owner's lease would have run out, holding no pool slot meanwhile
        # (half the visibility timeout at most, so the waiting message itself
        # is not handed on). Forever: the job ends or its owner dies.
        countdown = min(busy.wait + 1.0, max(1.0, settings.trainer.visibility_timeout / 2))
        log.info("%s", busy)
        raise self.retry(countdown=countdown) from None
