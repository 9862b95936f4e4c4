"""50 concurrent clients on mixed tasks and inputs: no call fails, and every
answer equals the answer to the same request sent alone (the batcher mixes
them into shared batches; the engine's results do not depend on the batch)."""

from __future__ import annotations

import random
import threading

import pytest

from .conftest import sample

CLIENTS = 50
CALLS_PER_CLIENT = 4
# (task, sample input): conversation tasks on both channels, a multi-label
# and an ordinal task, the e-mail and review tasks.
MIX = [
    ("rc-a", "call-cancelled"), ("csa", "call-cancelled"), ("csqr", "call-cancelled"), ("csc", "call-cancelled"),
    ("rc-i", "im-invoice"), ("idm", "im-invoice"), ("see", "im-invoice"),
    ("ec", "email"), ("rtc", "review"),
]


def test_fifty_concurrent_clients_get_the_answers_they_would_get_alone(served):
    alone_client = served.inference_client(timeout=60)
    alone = {(task, name): alone_client.classify(task, sample(name)).prediction for task, name in MIX}

    rng = random.Random(1234)
    plans = [[rng.choice(MIX) for _ in range(CALLS_PER_CLIENT)] for _ in range(CLIENTS)]
    start = threading.Barrier(CLIENTS)
    results: list[list] = [[] for _ in range(CLIENTS)]
    failures: list[BaseException] = []
    batcher = served.inference.core.serving.models["tiny-llama"].batcher
    batches_before = batcher.batches

    def client_main(i: int) -> None:
        from mtserve_api.inference import InferenceClient

        try:
            with InferenceClient(served.inference_address, timeout=120) as client:
                start.wait(60)
                for task, name in plans[i]:
                    results[i].append(((task, name), client.classify(task, sample(name))))
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=client_main, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sum(len(r) for r in results) == CLIENTS * CALLS_PER_CLIENT
    for per_client in results:
        for key, answer in per_client:
            want, got = alone[key], answer.prediction
            assert (got.task, got.label, got.labels, answer.checkpoint_id) == (want.task, want.label, want.labels, "tiny-llama")
            assert [s.probability for s in got.scores] == pytest.approx([s.probability for s in want.scores], abs=1e-5)
            if want.expected_value is not None:
                assert got.expected_value == pytest.approx(want.expected_value, abs=1e-5)
    # Batching is what made this work (how many calls shared a batch depends
    # on timing, so it is reported, not asserted; test_batcher.py asserts it).
    print(f"{CLIENTS * CALLS_PER_CLIENT} calls in {batcher.batches - batches_before} batches, largest {batcher.largest_batch}")
