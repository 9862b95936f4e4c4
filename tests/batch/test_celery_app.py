"""The Celery configuration (each reliability setting on purpose), the
settings that keep it consistent, and the thin tasks' retry decisions (run
in-process with `apply`; the real-worker behaviour is tested end to end)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from batch import jobs, worker
from batch.celery_app import SCORE_CHUNK, celery_config, make_app
from batch.scoring import Item
from batch.store import ResultStore
from batch.synth import generate_day, write_day
from mtserve.config import load_settings
from mtserve.errors import UnavailableError, ValidationError


def test_reliability_settings() -> None:
    s = load_settings(
        overrides={"batch.visibility_timeout": 900, "batch.chunk_time_limit": 600, "batch.key_prefix": "k:", "batch.queue": "q"},
        env={},
    )
    c = celery_config(s)
    assert c["task_acks_late"] is True and c["task_reject_on_worker_lost"] is True
    assert c["worker_prefetch_multiplier"] == 1
    assert c["broker_transport_options"]["visibility_timeout"] == 900
    assert c["broker_transport_options"]["global_keyprefix"] == "k:"
    assert c["result_backend_transport_options"]["global_keyprefix"] == "k:"
    assert c["task_annotations"][SCORE_CHUNK] == {"soft_time_limit": 540, "time_limit": 600}
    assert c["task_default_queue"] == "q" and c["accept_content"] == ["json"]
    assert c["broker_connection_max_retries"] is None and c["worker_cancel_long_running_tasks_on_connection_loss"] is True
    assert c["worker_proc_alive_timeout"] >= 60  # a pool process loads a model before it reports up
    app = make_app(s)
    assert app.conf.task_acks_late and app.conf.broker_url == "redis://127.0.0.1:6379/0"
    assert app.conf.result_backend == app.conf.broker_url


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch.visibility_timeout": 60, "batch.chunk_time_limit": 60}, r"visibility_timeout \(60\) must be longer than chunk_time_limit \(60\)"),
        ({"batch.chunk_soft_time_limit": 1800}, r"chunk_soft_time_limit \(1800\) must be below chunk_time_limit \(1800\)"),
        ({"batch.retry_backoff_max": 3600}, r"retry_backoff_max \(3600\) must be shorter than visibility_timeout \(3600\)"),
    ],
)
def test_inconsistent_limits_fail_at_start(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_settings(overrides=overrides, env={})


def test_worker_command_line() -> None:
    from mtserve_cli.batch import worker_argv

    s = load_settings(overrides={"batch.scorer": "local", "batch.queue": "nightly"}, env={})
    argv = worker_argv(s, concurrency=None, pool="prefork", loglevel="info", hostname="w1@%h")
    assert argv[1:6] == ["-m", "celery", "-A", "batch.celery_app", "worker"]
    assert argv[argv.index("--queues") + 1] == "nightly" and argv[argv.index("--concurrency") + 1] == "1"
    assert "--without-mingle" in argv and argv[-2:] == ["--hostname", "w1@%h"]
    grpc = load_settings(overrides={"batch.scorer": "grpc"}, env={})
    argv = worker_argv(grpc, concurrency=None, pool="prefork", loglevel="info", hostname=None)
    assert argv[argv.index("--concurrency") + 1] == "4"


# -- the thin task, run in-process --------------------------------------------------------------
class Flaky:
    """Fails the first `failures` calls with UNAVAILABLE, then answers with a fixed label."""

    kind = "fake"

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0
        from mtserve.tasks import builtin_catalogue_path, load_catalogue

        self.catalogue = load_catalogue(builtin_catalogue_path("hotel"))

    def tasks(self) -> Any:
        return {t.name: t for t in self.catalogue.tasks}

    def plan(self, channel: Any, selected: Any) -> Any:
        from batch.local_scorer import LocalScorer

        return LocalScorer.plan(self, channel, selected)  # type: ignore[arg-type]

    @property
    def checkpoint_id(self) -> str:
        return "fake"

    def score(self, items: Sequence[Item]) -> Any:
        from mtserve.predictions import Answer, LabelScore, Prediction

        self.calls += 1
        if self.calls <= self.failures:
            raise UnavailableError("inference at 127.0.0.1:1: UNAVAILABLE: connection refused")
        return [
            [Answer(Prediction(r.name, r.version, "a", ("a",), (LabelScore("a", 1.0),)), r.checkpoint) for r in refs]
            for _, refs in items
        ]

    def close(self) -> None:
        pass


@pytest.fixture
def fake_worker(tmp_path: Path) -> Iterator[Any]:
    settings = load_settings(
        overrides={"batch.results_database_url": f"sqlite:///{tmp_path / 'r.db'}", "batch.output_dir": str(tmp_path / "out"),
                   "batch.max_retries": 2},
        env={"MTSERVE_HOME": str(tmp_path)},
    )
    store = ResultStore(settings.results_database_url)
    logs = write_day(generate_day("2024-05-01", 3, 1), tmp_path / "day").logs
    job = jobs.submit_job(settings, store, _NoSend(), logs=logs, date="2024-05-01", tasks=None)

    def install(failures: int) -> Flaky:
        scorer = Flaky(failures)
        worker._state = worker.WorkerState(settings, store, scorer, "test")
        return scorer

    try:
        yield install, store, job
    finally:
        worker._state = None
        store.close()


class _NoSend:
    def enqueue(self, job_id: str, chunks: Any) -> None: ...
    def finalize(self, job_id: str) -> None: ...
    def queue_depth(self) -> int | None: return 0


def test_unavailable_is_retried_then_succeeds(fake_worker: Any) -> None:
    from batch.tasks import score_chunk

    install, store, job = fake_worker
    scorer = install(failures=2)
    result = score_chunk.apply(args=(job.job_id, store.chunk(job.job_id, 0).chunk))
    assert result.get()["status"] == "done" and scorer.calls == 3
    assert store.chunk(job.job_id, 0).status == "done" and store.chunk(job.job_id, 0).attempts == 3


def test_retries_exhausted_marks_the_chunk_failed(fake_worker: Any) -> None:
    from batch.tasks import score_chunk

    install, store, job = fake_worker
    install(failures=99)
    out = score_chunk.apply(args=(job.job_id, store.chunk(job.job_id, 0).chunk)).get()
    assert out["status"] == "failed" and "UNAVAILABLE" in out["error"]
    state = store.chunk(job.job_id, 0)
    assert state.status == "failed" and "gave up after 2 retries" in state.error


def test_backoff_is_exponential_capped_and_jittered() -> None:
    from batch.tasks import backoff

    for retries, cap in ((0, 60), (3, 60), (10, 60)):
        want = min(cap, 2**retries)
        draws = [backoff(retries, cap) for _ in range(400)]
        assert all(0 <= d <= want for d in draws)
        assert len(set(draws)) > 1  # jittered: not one fixed delay
        assert max(draws) > want / 2  # and grows with the retries up to the cap


def test_the_parent_process_builds_no_scorer() -> None:
    """Importing the app (what the worker's parent does) builds nothing; only
    worker_process_init (after the fork) or a task's first use does."""
    import subprocess
    import sys

    code = (
        "import sys\nimport batch.celery_app, batch.tasks\nfrom batch import worker\n"
        "print(worker.loaded() is None, 'torch' in sys.modules, 'grpc' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


def test_a_scorer_that_cannot_be_built_fails_chunks_visibly(fake_worker: Any, tmp_path: Path) -> None:
    """A wrong checkpoint path: no endless restart of the pool process, but
    chunks failed with the reason (status and report show it)."""
    from batch.tasks import score_chunk

    install, store, job = fake_worker
    install(0)
    state = worker._state
    bad = state.settings.model_copy(update={"batch": state.settings.batch.model_copy(update={"scorer": "local", "checkpoint": str(tmp_path / "missing")})})
    worker._state = worker.WorkerState(bad, store, None, "test")
    out = score_chunk.apply(args=(job.job_id, store.chunk(job.job_id, 0).chunk)).get()
    assert out["status"] == "failed" and "cannot build its local scorer" in out["error"] and "missing" in out["error"]
    assert store.chunk(job.job_id, 0).status == "failed"


def test_queue_depth_counts_the_prefixed_queue(local_redis: str) -> None:
    """What reconcile asks before re-sending: messages waiting in the job queue
    (nothing consumes this queue, so the messages stay)."""
    import uuid

    import redis

    from batch.dispatch import CeleryEnqueuer

    tag = uuid.uuid4().hex[:8]
    s = load_settings(overrides={"batch.broker_url": local_redis, "batch.queue": f"depth-{tag}", "batch.key_prefix": f"depth-{tag}:"}, env={})
    enqueuer = CeleryEnqueuer(make_app(s))
    try:
        assert enqueuer.queue_depth() == 0
        enqueuer.finalize("a")
        enqueuer.finalize("b")
        assert enqueuer.queue_depth() == 2
    finally:
        r = redis.Redis.from_url(local_redis)
        keys = list(r.scan_iter(match=f"depth-{tag}:*"))
        if keys:
            r.delete(*keys)
