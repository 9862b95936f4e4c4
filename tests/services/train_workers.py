"""Train workers for the trainer tests: a real Redis (scripts/setup.sh's
password-protected one on 6380, as tests/batch/conftest.py finds it), real
`mtserve train worker` processes (Celery, prefork, queue `train`), and the
settings the in-process trainer service and the workers share.

Isolation as in the batch tests: every environment has its own Redis key
prefix (the `train` queue included) and its own SQLite job database, so
tests never see each other's messages or jobs. Every worker started here is
stopped by `TrainEnv.cleanup` (process group: SIGTERM, then SIGKILL), pass
or fail, and the environment's Redis keys are deleted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from mtserve.localdev import local_services

REPO = Path(__file__).resolve().parents[2]
# The same Redis and DB number as tests/batch/conftest.py (TEST_REDIS_URL overrides); keys are prefixed per test.
LOCAL_REDIS = urlsplit(os.environ.get("TEST_REDIS_URL") or local_services().get("LOCAL_REDIS_URL")
                       or "redis://127.0.0.1:6380/0")._replace(path="/13").geturl()
# One torch thread per job process: two cores shared with the test process.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def redis_or_skip() -> str:
    import redis
    from kombu.utils.url import maybe_sanitize_url

    try:
        redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        message = f"Redis at {maybe_sanitize_url(LOCAL_REDIS)} is unreachable ({exc}); the train-worker tests need it"
        if os.environ.get("TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(message + "; TEST_REQUIRE_SERVICES=1 (scripts/test.sh) requires it: run scripts/setup.sh")
        pytest.skip(message)
    return LOCAL_REDIS


def poll(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class TrainWorker:
    """`python -m mtserve_cli train worker` in its own process group (it
    execs celery, which forks its pool process; the job's training process
    is in a session of its own and ends with the pool process)."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - written for the worker's whole life; closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtserve_cli", "train", "worker", "--loglevel", "info", "--hostname", f"{name}@%h"],
            env=env, cwd=str(REPO), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> TrainWorker:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"train worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return f"{self.name}@" in self.log() and " ready." in self.log()

        poll(ready, timeout, f"train worker {self.name} to be ready")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


@dataclass
class TrainEnv:
    """Settings shared by the trainer service (in this process) and the workers (subprocesses)."""

    root: Path
    broker_url: str
    key_prefix: str
    overrides: dict[str, Any]
    workers: list[TrainWorker] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTSERVE_")}
        env.update({"MTSERVE_" + key.upper().replace(".", "__"): str(value) for key, value in self.overrides.items()})
        env.update(THREADS, MTSERVE_HOME=os.environ["MTSERVE_HOME"], MTSERVE_DEVICE="cpu", MTSERVE_DTYPE="float32", PYTHONPATH=str(REPO))
        return env

    def start_worker(self, name: str, *, ready: bool = True) -> TrainWorker:
        w = TrainWorker(self.env, self.root / f"train-worker-{name}.log", name)
        self.workers.append(w)
        return w.wait_ready() if ready else w

    def cleanup(self) -> None:
        for w in self.workers:
            w.stop()
        try:
            import redis

            r = redis.Redis.from_url(self.broker_url, socket_connect_timeout=2)
            keys = list(r.scan_iter(match=f"{self.key_prefix}*", count=1000))
            if keys:
                r.delete(*keys)
        except Exception:  # noqa: BLE001,S110 - best effort: the prefix is unique anyway
            pass


def make_train_env(root: Path, *, trainer_root: Path, **trainer: Any) -> TrainEnv:
    """Short leases and polls (a dead worker's job comes back in seconds);
    `trainer` overrides trainer.* settings."""
    tag = uuid.uuid4().hex[:10]
    root.mkdir(parents=True, exist_ok=True)
    broker = redis_or_skip()
    overrides: dict[str, Any] = {
        "batch.broker_url": broker,
        "batch.key_prefix": f"mtserve-test-{tag}:",
        "trainer.database_url": f"sqlite:///{root / 'trainer.db'}",
        "trainer.jobs_dir": str(root / "jobs"),
        "trainer.root": str(trainer_root),
        "trainer.poll_seconds": 0.1,
        "trainer.cancel_grace_seconds": 5,
        "trainer.lease_seconds": 6,
    }
    overrides.update({f"trainer.{k}": v for k, v in trainer.items()})
    return TrainEnv(root=root, broker_url=broker, key_prefix=overrides["batch.key_prefix"], overrides=overrides)
