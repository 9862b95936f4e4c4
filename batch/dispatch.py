"""Sending a job's chunks to Celery: a chord of one `score_chunk` per chunk
with `finish_job` as its callback. Tasks are sent by name, so the sender (the
CLI, or finish_job inside a worker) needs neither torch nor the scorer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery, chord

from batch.celery_app import CHORD_FAILED, FINISH_JOB, SCORE_CHUNK
from batch.store import ChunkState

log = logging.getLogger(__name__)


class CeleryEnqueuer:
    def __init__(self, app: Celery):
        self.app = app
        self.queue: str = app.conf.task_default_queue

    def enqueue(self, job_id: str, chunks: Sequence[ChunkState]) -> None:
        header = [self.app.signature(SCORE_CHUNK, args=(job_id, c.chunk), queue=self.queue) for c in chunks]
        callback = self.app.signature(FINISH_JOB, kwargs={"job_id": job_id}, queue=self.queue)
        # If a chunk task fails outright (a hard time limit), the chord never
        # calls its callback; the errback runs the same completeness check.
        callback.link_error(self.app.signature(CHORD_FAILED, kwargs={"job_id": job_id}, queue=self.queue))
        self._stop_listening(chord(header, app=self.app)(callback))

    def finalize(self, job_id: str) -> None:
        self._stop_listening(self.app.send_task(FINISH_JOB, args=([],), kwargs={"job_id": job_id}, queue=self.queue))

    def _stop_listening(self, result: Any) -> None:
        """The sender never waits for these results (the job's state is in the
        results database). Sending subscribed to them on a Redis result
        backend; unsubscribe now, while the process can still talk to Redis:
        otherwise AsyncResult.__del__ does it at interpreter exit and prints a
        19-line "Exception ignored" traceback under `mtserve batch submit`."""
        consumer = getattr(self.app.backend, "result_consumer", None)  # async backends (Redis) only
        if consumer is None:
            return
        parent = getattr(result, "parent", None)
        for r in [result, parent, *(getattr(parent, "results", None) or [])]:
            if r is not None:
                consumer.cancel_for(r.id)

    def queue_depth(self) -> int | None:
        try:
            with self.app.connection_for_write() as conn:
                channel = conn.default_channel
                size = getattr(channel, "_size", None)
                if size is not None:
                    # Redis: kombu's own count of the queue's lists, key prefix
                    # applied (a passive queue_declare checks EXISTS without the
                    # global key prefix and reports the queue missing).
                    return int(size(self.queue))
                return int(channel.queue_declare(queue=self.queue, passive=True).message_count)
        except Exception as exc:  # noqa: BLE001 - a missing queue or a broker hiccup: unknown
            log.debug("queue depth of %s unknown: %s", self.queue, exc)
            return None
