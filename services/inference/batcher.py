"""Dynamic batching in front of one Engine (one loaded checkpoint).

Calls for any task arrive as jobs (the requests of one RPC for this
checkpoint). One worker thread takes the oldest job, keeps collecting until
the batch is full (max requests, or max estimated tokens) or the oldest job
has waited `max_wait_ms`, and runs the whole batch through one
`Engine.predict` call, which shares each input's prefix across its tasks and
packs forward passes by tokens. While the worker computes, new jobs queue up,
so under load batches fill without waiting at all.

The queue is bounded (in requests): a full queue refuses new jobs at once with
OverloadedError (RESOURCE_EXHAUSTED), so callers back off instead of piling
up behind a deadline they will miss. Jobs whose caller went away (deadline,
cancel) are dropped before they cost a forward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mtserve.engine import Request
from mtserve.errors import OverloadedError, UnavailableError
from mtserve.inputs import Conversation, Input, TextPair
from mtserve.prompt import COMPACT_MARKER
from mtserve.tasks import Taxonomy
from services.common.metrics import BATCH_REQUESTS, BATCH_SECONDS, QUEUE_DEPTH, REFUSED

log = logging.getLogger(__name__)


def estimate_tokens(requests: Sequence[Request], *, compact: bool = False) -> int:
    """A cheap upper-ish bound of a job's prompt tokens, without tokenizing
    (the tokenizer is not safe to share across threads, and the engine
    tokenizes anyway): ~3 UTF-8 bytes per token holds for English (~4) and
    Chinese (3 bytes, ~1 token per character). Each distinct input counts
    once, as the engine computes its prefix once. `compact`: the checkpoint
    asks task markers, not instructions (a third of the question tokens), so
    its batches may hold more."""
    inputs: dict[int, Input] = {}
    total = 0
    for r in requests:
        inputs.setdefault(id(r.input), r.input)
        # a multi-label task asks one question (one suffix) per label
        asks = len(r.task.labels) if r.task.taxonomy is Taxonomy.MULTILABEL else 1
        question = COMPACT_MARKER.format(name=r.task.name) if compact else r.task.instruction
        total += asks * (16 + len(question.encode()) // 3)
    for inp in inputs.values():
        total += 32 + _input_bytes(inp) // 3
    return total


def _input_bytes(inp: Input) -> int:
    if isinstance(inp, Conversation):
        return sum(len(t.text.encode()) + 12 for t in inp.turns)
    if isinstance(inp, TextPair):
        return len(inp.text.encode()) + len(inp.text_b.encode())
    return len(inp.text.encode())


@dataclass
class BatchResult:
    """A job's slots (Prediction or a domain error each) and its timing."""

    results: list[Any]
    queue_ms: float
    compute_ms: float
    batch_requests: int


@dataclass
class _Job:
    requests: list[Request]
    tokens: int
    enqueued: float
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(
        self,
        engine: Any,
        *,
        name: str,
        max_batch_tokens: int = 8192,
        max_batch_requests: int = 64,
        max_wait_ms: float = 5.0,
        queue_size: int = 256,
    ):
        self.engine = engine  # replaced (between batches) when the truncation policy changes
        # Held while the engine (and its tokenizer, which is not thread-safe)
        # is in use: by the worker for a batch, by others for a quick check.
        self.engine_lock = threading.Lock()
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._queue: deque[_Job] = deque()
        self._depth = 0  # requests queued
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()
        self._queue_depth = QUEUE_DEPTH.labels(name)
        self.batches = 0  # counters, for ModelInfo and tests
        self.largest_batch = 0

    @property
    def depth(self) -> int:
        with self._cond:
            return self._depth

    def submit(self, requests: Sequence[Request]) -> Future:
        """Queue one job; its future resolves to a BatchResult."""
        style = getattr(getattr(self.engine, "renderer", None), "style", None)  # an engine over a trained checkpoint has one
        job = _Job(list(requests), estimate_tokens(requests, compact=bool(style and style.compact)), time.monotonic())
        with self._cond:
            if self._closed:
                raise UnavailableError(f"checkpoint {self.name!r} is no longer served by this replica (unloaded or shutting down); retry")
            # A job larger than the whole queue is still taken when the queue
            # is empty, or it could never run.
            if self._depth and self._depth + len(job.requests) > self.queue_size:
                REFUSED.labels("inference", "queue_full").inc()
                raise OverloadedError(
                    f"the batch queue of checkpoint {self.name!r} is full ({self._depth} requests waiting, "
                    f"inference.queue_size={self.queue_size}); retry with backoff"
                )
            self._queue.append(job)
            self._depth += len(job.requests)
            self._queue_depth.set(self._depth)
            self._cond.notify_all()
        return job.future

    def close(self, wait: bool = True) -> None:
        """Refuse new jobs, finish the queued ones, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the worker ---------------------------------------------------------------------
    def _full(self) -> bool:
        requests = tokens = 0
        for job in self._queue:
            requests += len(job.requests)
            tokens += job.tokens
            if requests >= self.max_batch_requests or tokens >= self.max_batch_tokens:
                return True
        return False

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None  # closed and drained
            deadline = self._queue[0].enqueued + self.max_wait
            while not self._closed and not self._full():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._queue.popleft()]
            requests, tokens = len(batch[0].requests), batch[0].tokens
            while self._queue:
                job = self._queue[0]
                if requests + len(job.requests) > self.max_batch_requests or tokens + job.tokens > self.max_batch_tokens:
                    break
                batch.append(self._queue.popleft())
                requests += len(job.requests)
                tokens += job.tokens
            self._depth -= sum(len(j.requests) for j in batch)
            self._queue_depth.set(self._depth)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            # A job cancelled by its caller (deadline passed, client gone) is
            # dropped here, before it costs compute.
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.monotonic()
            requests = [r for job in batch for r in job.requests]
            try:
                with self.engine_lock:
                    results = self.engine.predict(requests)
            except BaseException as exc:  # a bug or an OOM: every caller of the batch learns it
                log.exception("batch of %d requests on %s failed", len(requests), self.name)
                for job in batch:
                    job.future.set_exception(exc)
                continue
            compute_ms = (time.monotonic() - started) * 1000.0
            BATCH_REQUESTS.labels(self.name).observe(len(requests))
            BATCH_SECONDS.labels(self.name).observe(compute_ms / 1000.0)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(requests))
            k = 0
            for job in batch:
                n = len(job.requests)
                job.future.set_result(BatchResult(results[k : k + n], (started - job.enqueued) * 1000.0, compute_ms, len(requests)))
                k += n
