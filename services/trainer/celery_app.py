"""The Celery app of the train queue: training jobs as tasks, consumed by one
train worker per GPU machine (`mtserve train worker`):

    celery -A services.trainer.celery_app worker -Q train --pool prefork --concurrency 1 --prefetch-multiplier 1

The broker is the deployment's Redis (batch.broker_url, batch.key_prefix);
the job records and events are in the SQL database (trainer.database_url),
so a message carries only a job id, and the trainer service reads progress
from the database, whichever machine trains. No result backend: the
database is the one record of what happened.

How a job survives a dead worker, and why this way. The task is
`acks_late` (acknowledged when the attempt ended, not when it began) with
`reject_on_worker_lost`: when the pool process dies (OOM, SIGKILL) its
parent puts the message back at once; when the whole worker or its machine
dies, nobody acknowledges and Redis hands the message to another worker
after `trainer.visibility_timeout`. Either way the next worker finds the job
RUNNING under a lease nobody renews, takes it over and resumes it from its
last saved state (`--resume`; trainer/runs.py). Redis has no way to extend a
message's visibility while a job trains for hours, so a healthy long job's
message comes back too: the lease in the database (not the broker) decides
who trains, and a delivery that finds a live owner retries itself later
(a countdown, no GPU held) until the job ends or its owner falls silent.
That makes the visibility timeout only the bound on how long a dead
machine's job waits, not a limit on job length.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from mtserve.config import Settings, load_settings

RUN_JOB = "trainer.run_job"
QUEUE = "train"


def celery_config(settings: Settings) -> dict[str, Any]:
    b, t = settings.batch, settings.trainer
    transport: dict[str, Any] = {
        # See the module docstring: how soon a dead worker's job comes back.
        "visibility_timeout": t.visibility_timeout,
        # kombu sweeps for expired unacknowledged messages every interval x
        # throttle seconds (100 s by default); keep pace with the timeout.
        "unacked_restore_interval": max(1, min(60, t.visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
    }
    if b.key_prefix:
        # One Redis, many deployments (or test runs): every key is prefixed.
        transport["global_keyprefix"] = b.key_prefix
    return {
        "broker_url": b.broker_url,
        "broker_transport_options": transport,
        # JSON only: a pickled message from the broker would be code execution.
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "task_routes": {RUN_JOB: {"queue": QUEUE}},
        # The database holds every outcome; nothing to store in Redis.
        "task_ignore_result": True,
        # Acknowledge a job only once its attempt ended; requeue it when the
        # pool process running it dies (module docstring). Safe because
        # running a job twice is prevented by the lease, and resuming it is
        # what an attempt does.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that raised (a bug, a database down at the end) is acked:
        # the job's record says what happened; ResumeJob runs it again.
        "task_acks_on_failure_or_timeout": True,
        # One job per worker process at a time, and no second job reserved
        # while one trains: it would wait hours in this worker's buffer
        # instead of going to an idle GPU.
        "worker_prefetch_multiplier": 1,
        # A Redis blip must not kill hours of training: the attempt goes on;
        # if its ack is lost the message comes back later and finds the job done.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # No time limits: jobs take as long as they take; CancelJob stops them.
    }


def make_app(settings: Settings | None = None) -> Celery:
    """A Celery app for these settings. The worker uses the module's `app`;
    the trainer service builds its own from its settings to send jobs (by name)."""
    settings = settings or load_settings()
    app = Celery("mtserve-train", include=["services.trainer.tasks"])
    app.conf.update(celery_config(settings))
    app.mtserve_settings = settings
    return app


app = make_app()
