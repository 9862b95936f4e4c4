"""The train worker's job attempt and the job records, without Celery and
without torch: services/trainer/runner.py over services/trainer/store.py on
real SQLite files (and PostgreSQL with -m postgres). The training process is
a stand-in script taking `python`'s place in `python -m trainer run ...`,
so what is tested is the runner's part: the lease, what the worker refuses
(the role recorded with the job, paths outside its root), cancel by signal,
and how a process's end becomes the job's state."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.trainer.records import JobState, Options, new_job_id
from services.trainer.runner import Busy, WorkerConfig, run_job
from services.trainer.store import JobStore
from trainer.toy import toy_job, write_toy_data

# Prints its arguments as an event, a few progress events and a line that is
# not JSON, sleeps FAKE_SLEEP seconds, then ends as FAKE_END says.
FAKE = """#!/bin/sh
printf '{"event": "job_started", "argv": "%s"}\\n' "$*"
echo '{"event": "stage_started", "stage": "stage2", "steps": 3}'
echo '{"event": "step", "stage": "stage2", "step": 1, "steps": 3, "loss": 1.5, "tokens_per_s": 10}'
echo 'a stray print'
sleep "${FAKE_SLEEP:-0}"
case "${FAKE_END:-result}" in
  result) echo '{"event": "result", "job": "toy", "rows": [], "checkpoints": []}' ;;
  error) echo 'Traceback: noise' >&2; echo 'error: data: 1 bad line(s)' >&2; echo '  train.jsonl:3: unknown label' >&2; exit 2 ;;
  silent) exit 0 ;;
esac
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'trainer.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    s = JobStore(url)
    yield s
    s.close()


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    path = tmp_path / "fake-python"
    path.write_text(FAKE, encoding="utf-8")
    path.chmod(0o755)
    return path


def config(tmp_path: Path, fake: Path, name: str = "w1@host/1", **over: Any) -> WorkerConfig:
    values: dict[str, Any] = {"name": name, "jobs_dir": tmp_path / "work", "root": tmp_path, "checkpoints_root": tmp_path / "ckpts",
                              "lease_seconds": 5.0, "poll_seconds": 0.05, "cancel_grace": 5.0, "python": str(fake)}
    values.update(over)
    return WorkerConfig(**values)


def submit(store: JobStore, folder: Path, *, role: str = "admin", **options: Any) -> str:
    write_toy_data(folder, tasks=("sentiment", "topic"), train=4, dev=2)
    spec = yaml.safe_dump(toy_job(folder, base_model="tiny-llama"))  # a checkpoint id: nothing to confine
    job_id = new_job_id("toy")
    store.create(job_id, "toy", spec, Options(base_dir=str(folder), **options), requested_by="test-token", requested_role=role)
    return job_id


def kinds(store: JobStore, job_id: str) -> list[str | None]:
    return [e and e["event"] for _, e in store.events(job_id)]


def test_schema_matches_the_migrations(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from services.trainer import schema

    assert store.schema_revision() == "0001"
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"version_table": schema.VERSION_TABLE}), schema.metadata)
    assert diff == []


def test_an_attempt_runs_the_process_and_its_end_is_the_job_s_state(store, tmp_path, fake):
    job_id = submit(store, tmp_path / "job", promote=True, register=True, registry_address="registry:50051")
    assert run_job(store, job_id, config(tmp_path, fake)) == "succeeded"
    job = store.get(job_id)
    assert job.state is JobState.SUCCEEDED and job.result == {"job": "toy", "rows": [], "checkpoints": []}
    (attempt,) = job.attempts
    assert (attempt.action, attempt.outcome, attempt.exit_code, attempt.worker) == ("start", "succeeded", 0, "w1@host/1") and attempt.pid > 0
    assert kinds(store, job_id) == ["job_queued", "attempt_started", "job_started", "stage_started", "step", None, "result", "job_state"]
    argv = next(e for _, e in store.events(job_id) if e and e["event"] == "job_started")["argv"]
    # the spec the worker wrote, its roots passed on (the process confines again), promotion with the recorded registry
    assert f"-m trainer run -f {tmp_path}/work/{job_id}/spec.yaml --base-dir {tmp_path}/job --exit-with-parent {os.getpid()}" in argv
    assert f"--root {tmp_path} --checkpoints-root {tmp_path}/ckpts --promote --registry registry:50051" in argv
    assert job.progress.stage == "stage2" and job.progress.step == 1 and job.progress.events == 8
    assert job.folder == str(tmp_path / "work" / job_id)
    # a second delivery of the same message finds the job done and runs nothing
    assert run_job(store, job_id, config(tmp_path, fake, name="w2@host/2")) == "succeeded"
    assert len(store.get(job_id).attempts) == 1


def test_a_process_that_fails_reports_its_own_error_line(store, tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_END", "error")
    job_id = submit(store, tmp_path / "job")
    assert run_job(store, job_id, config(tmp_path, fake)) == "failed"
    job = store.get(job_id)
    assert job.error == "data: 1 bad line(s)\n  train.jsonl:3: unknown label" and job.attempts[0].exit_code == 2
    monkeypatch.setenv("FAKE_END", "silent")
    store.queue_resume(job_id, requested_by="test-token", requested_role="admin")
    assert run_job(store, job_id, config(tmp_path, fake)) == "failed"
    job = store.get(job_id)
    assert job.error == "its process exited without a result" and [a.action for a in job.attempts] == ["start", "resume"]


def test_a_live_lease_turns_a_redelivery_away_and_a_silent_one_is_taken_over(store, tmp_path, fake, monkeypatch):
    """The message of a running job delivered again (visibility timeout, a
    pool process's successor): Busy while the owner heartbeats; once it has
    been silent for the lease, the next delivery ends its attempt as
    interrupted and resumes the job."""
    job_id = submit(store, tmp_path / "job")
    first = store.claim(job_id, "w1@a/1", lease_seconds=5, folder="f", now=1000.0)
    assert first.kind == "run" and first.action == "start" and first.attempt == 1
    busy = store.claim(job_id, "w2@b/2", lease_seconds=5, folder="f", now=1003.0)
    assert busy.kind == "busy" and busy.owner == "w1@a/1" and busy.wait == pytest.approx(2.0)
    with pytest.raises(Busy, match="runs on w1@a/1"):
        run_job(store, job_id, config(tmp_path, fake, name="w2@b/2", lease_seconds=1e10))
    # (a lease longer than the epoch: the heartbeat of t=1000 is live.) w1 falls silent (its heartbeat is from t=1000); w2's delivery takes over and resumes
    assert run_job(store, job_id, config(tmp_path, fake, name="w2@b/2", lease_seconds=5)) == "succeeded"
    job = store.get(job_id)
    assert [(a.worker, a.action, a.outcome) for a in job.attempts] == [("w1@a/1", "start", "interrupted"), ("w2@b/2", "resume", "succeeded")]
    lost = next(e for _, e in store.events(job_id) if e and e["event"] == "attempt_lost")
    assert lost["worker"] == "w1@a/1" and "stopped heartbeating" in lost["error"] and "resumed on w2@b/2" in lost["error"]
    assert "--resume" in next(e for _, e in store.events(job_id) if e and e["event"] == "job_started")["argv"]
    # the old owner, back from the dead, may write nothing more
    from services.trainer.store import LeaseLost

    with pytest.raises(LeaseLost):
        store.log(job_id, "w1@a/1", [{"event": "step"}])


def test_cancel_reaches_the_running_process_through_the_record(store, tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "60")
    job_id = submit(store, tmp_path / "job")
    out: dict[str, str] = {}
    worker = threading.Thread(target=lambda: out.update(state=run_job(store, job_id, config(tmp_path, fake))))
    worker.start()
    deadline = time.monotonic() + 30
    while store.get(job_id).progress.step != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.cancel(job_id, lease_seconds=5) is False  # a live worker: asked, not done here
    worker.join(30)
    job = store.get(job_id)
    assert out["state"] == "cancelled" and job.state is JobState.CANCELLED and job.error == "cancelled"
    assert job.attempts[0].exit_code == -signal.SIGTERM and job.attempts[0].outcome == "cancelled"
    # a queued job is cancelled at once, and its message, when it comes, runs nothing
    queued = submit(store, tmp_path / "queued")
    assert store.cancel(queued, lease_seconds=5) is True
    assert run_job(store, queued, config(tmp_path, fake)) == "cancelled" and store.get(queued).attempts == []


def test_the_worker_checks_the_recorded_role_and_the_paths_itself(store, tmp_path, fake):
    """A job record that did not come through the RPC's checks (written into
    the database or replayed into the queue by someone who could) is held to
    the same rules by the worker before any process starts."""
    low = submit(store, tmp_path / "low", role="operator")
    assert run_job(store, low, config(tmp_path, fake)) == "failed"
    job = store.get(low)
    assert job.error == "StartJob needs the admin role; the job was requested by 'test-token' with role operator; nothing was run"
    assert job.attempts[0].pid == 0 and "job_started" not in kinds(store, low)

    outside = submit(store, tmp_path.parent / f"outside-{tmp_path.name}")
    assert run_job(store, outside, config(tmp_path, fake)) == "failed"
    error = store.get(outside).error
    assert error == f"the worker refused the job: base_dir: must be inside the trainer root (setting trainer.root) (got '{tmp_path.parent}/outside-{tmp_path.name}')"
    assert store.get(outside).attempts[0].pid == 0 and "job_started" not in kinds(store, outside)

    # a message naming a job the database does not have, or no job at all: nothing happens
    assert run_job(store, "toy-20260101-000000-abcd", config(tmp_path, fake)) == "unknown"
    assert run_job(store, "../../etc", config(tmp_path, fake)) == "unknown"
    assert sorted(j.id for j in store.list()) == sorted([outside, low])


def test_a_cancel_its_dead_worker_never_saw_is_honoured_by_the_next_delivery(store, tmp_path, fake):
    job_id = submit(store, tmp_path / "job")
    assert store.claim(job_id, "w1@a/1", lease_seconds=5, folder="f").kind == "run"
    assert store.cancel(job_id, lease_seconds=5) is False  # w1 is alive: asked to stop
    # ...and dies before it reads the request; the job's message comes back to w2 after w1's lease
    assert run_job(store, job_id, config(tmp_path, fake, name="w2@b/2", lease_seconds=1e-3)) == "cancelled"
    job = store.get(job_id)
    assert job.state is JobState.CANCELLED and "had stopped heartbeating" in job.error
    assert [(a.worker, a.outcome) for a in job.attempts] == [("w1@a/1", "cancelled")]  # nothing ran on w2
