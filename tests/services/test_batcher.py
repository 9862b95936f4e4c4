"""The dynamic batcher in front of a real tiny engine. A gate holds the
worker inside its current batch so that what queues meanwhile is known
exactly: no sleeps, no timing assumptions."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from mtserve.engine import Engine, Request
from mtserve.errors import OverloadedError, UnavailableError, ValidationError
from services.inference.batcher import Batcher, estimate_tokens

from .conftest import sample


class GatedEngine:
    """Delegates to a real engine; each predict waits for the gate and records its batch size."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def predict(self, requests):
        self.batch_sizes.append(len(requests))
        self.entered.set()
        self.gate.wait()
        return self.engine.predict(requests)


@pytest.fixture(scope="module")
def engine(tiny_llama, hotel):
    return Engine(tiny_llama.model, tiny_llama.tokenizer, hotel.truncation)


def call_requests(hotel, inp):
    return [Request(t, inp) for t in hotel.tasks if not t.is_generation and t.applies_to(inp.kind, inp.channel)]


def test_jobs_queued_during_a_batch_run_together_next(engine, hotel):
    gated = GatedEngine(engine)
    batcher = Batcher(gated, name="tiny", max_wait_ms=0, max_batch_requests=64, queue_size=64)
    try:
        call, email = sample("call-cancelled"), sample("email")
        first = batcher.submit([Request(hotel.task("ec"), email)])
        assert gated.entered.wait(30)
        jobs = [batcher.submit([Request(hotel.task(name), call)]) for name in ("rc-a", "id", "csqr", "see")]
        jobs.append(batcher.submit([Request(hotel.task("ec"), email)]))
        assert batcher.depth == 5
        gated.gate.set()
        results = [f.result(60) for f in [first, *jobs]]
        assert gated.batch_sizes == [1, 5]
        assert [r.batch_requests for r in results] == [1, 5, 5, 5, 5, 5]
        # batched answers equal the answers computed alone
        for job_requests, result in zip([[Request(hotel.task(n), call)] for n in ("rc-a", "id", "csqr", "see")], results[1:5]):
            alone = engine.predict(job_requests)[0]
            assert [s.probability for s in result.results[0].scores] == pytest.approx([s.probability for s in alone.scores], abs=1e-5)
        assert results[1].queue_ms >= 0 and results[1].compute_ms > 0
    finally:
        gated.gate.set()
        batcher.close()


def test_batches_respect_the_request_limit(engine, hotel):
    gated = GatedEngine(engine)
    batcher = Batcher(gated, name="tiny", max_wait_ms=0, max_batch_requests=3, queue_size=64)
    try:
        email = sample("email")
        first = batcher.submit([Request(hotel.task("ec"), email)])
        assert gated.entered.wait(30)
        jobs = [batcher.submit([Request(hotel.task("ec"), email)]) for _ in range(7)]
        gated.gate.set()
        for f in [first, *jobs]:
            f.result(60)
        assert gated.batch_sizes == [1, 3, 3, 1]
    finally:
        gated.gate.set()
        batcher.close()


def test_a_full_queue_refuses_at_once_naming_the_limit(engine, hotel):
    gated = GatedEngine(engine)
    batcher = Batcher(gated, name="tiny", max_wait_ms=0, queue_size=2)
    try:
        email = sample("email")
        running = batcher.submit([Request(hotel.task("ec"), email)])
        assert gated.entered.wait(30)
        queued = [batcher.submit([Request(hotel.task("ec"), email)]) for _ in range(2)]
        with pytest.raises(OverloadedError) as info:
            batcher.submit([Request(hotel.task("ec"), email)])
        assert str(info.value) == (
            "the batch queue of checkpoint 'tiny' is full (2 requests waiting, inference.queue_size=2); retry with backoff"
        )
        gated.gate.set()
        for f in [running, *queued]:
            f.result(60)
        # a job larger than the whole queue still runs when the queue is empty
        big = batcher.submit(call_requests(hotel, sample("call-cancelled")))
        assert len(big.result(60).results) > 2
    finally:
        gated.gate.set()
        batcher.close()


def test_cancelled_jobs_cost_nothing_and_a_closed_batcher_refuses(engine, hotel):
    gated = GatedEngine(engine)
    batcher = Batcher(gated, name="tiny", max_wait_ms=0)
    email = sample("email")
    running = batcher.submit([Request(hotel.task("ec"), email)])
    assert gated.entered.wait(30)
    gone = batcher.submit([Request(hotel.task("ec"), email)])
    kept = batcher.submit([Request(hotel.task("ec"), email)])
    assert gone.cancel()  # the caller's deadline passed
    gated.gate.set()
    running.result(60)
    kept.result(60)
    with pytest.raises(CancelledError):
        gone.result(0)
    assert gated.batch_sizes == [1, 1]
    batcher.close()
    with pytest.raises(UnavailableError, match="no longer served"):
        batcher.submit([Request(hotel.task("ec"), email)])


def test_a_bad_request_fails_alone(engine, hotel):
    batcher = Batcher(engine, name="tiny", max_wait_ms=0)
    try:
        result = batcher.submit([Request(hotel.task("ec"), sample("email")), Request(hotel.task("ec"), sample("call-cancelled"))]).result(60)
        assert result.results[0].task == "ec"
        assert isinstance(result.results[1], ValidationError) and "reads text input" in str(result.results[1])
    finally:
        batcher.close()


def test_token_estimate_counts_a_shared_input_once(hotel):
    call = sample("call-cancelled")
    one = estimate_tokens([Request(hotel.task("rc-a"), call)])
    two = estimate_tokens([Request(hotel.task("rc-a"), call), Request(hotel.task("id"), call)])
    assert 0 < two - one < one  # the second task adds its suffix, not the conversation again
    multilabel = estimate_tokens([Request(hotel.task("csc"), call)])
    assert multilabel > one  # one question per label
    asked = [Request(hotel.task(n), call) for n in ("rc-a", "id", "csc")]
    # a compact checkpoint's questions are markers: the same batch is estimated smaller, the input the same
    assert estimate_tokens(asked[:1], compact=True) < one and estimate_tokens(asked, compact=True) < estimate_tokens(asked) / 1.5
