"""Fixtures for the batch tests: a real Redis (the machine's, or one a test
starts itself), real worker subprocesses (`python -m mtserve_cli worker`, i.e.
`celery -A batch.celery_app worker` underneath), and results stores on SQLite
and PostgreSQL.

Isolation: every environment gets its own queue name and Redis key prefix
(broker and result backend), its own results database and output folder, so
tests never see each other's messages. Every process a fixture starts is
stopped by the fixture (process group, SIGTERM then SIGKILL), pass or fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kombu.utils.url import maybe_sanitize_url as redact

from mtserve.config import Settings, load_settings
from mtserve.localdev import local_services

# scripts/setup.sh's password-protected Redis (mtserve.localdev; TEST_REDIS_URL
# overrides), on a DB number of its own; keys are prefixed per test anyway.
LOCAL_REDIS = urlsplit(os.environ.get("TEST_REDIS_URL") or local_services().get("LOCAL_REDIS_URL")
                       or "redis://127.0.0.1:6380/0")._replace(path="/13").geturl()
REPO = Path(__file__).resolve().parents[2]


def redis_reachable(url: str) -> str | None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        return None
    except redis.RedisError as exc:
        return str(exc)


def poll_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- worker subprocesses ------------------------------------------------------------------
class WorkerProc:
    """`python -m mtserve_cli worker` in its own process group (it execs celery,
    which forks its pool processes; killing the group kills them all)."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str):
        self.log_path = log_path
        self.name = name
        self._log = open(log_path, "ab")  # noqa: SIM115 - the worker writes it for its whole life; closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtserve_cli", "worker", "--loglevel", "info", "--hostname", f"{name}@%h"],
            env=env,
            cwd=str(REPO),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> WorkerProc:
        """Until a pool process has built its scorer (batch.worker logs it)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            text = self.log()
            return f"{self.name}@" in text and " ready." in text and "ready: scorer" in text

        poll_until(ready, timeout, f"worker {self.name} to be ready")
        return self

    def children(self) -> list[int]:
        import psutil

        try:
            return [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)  # the pool processes too, whatever the parent did
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


# -- an isolated batch environment ----------------------------------------------------------
@dataclass
class BatchEnv:
    root: Path
    env: dict[str, str]
    broker_url: str
    key_prefix: str
    workers: list[WorkerProc] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return load_settings(env=self.env)

    def store(self) -> Any:
        from batch.store import ResultStore

        return ResultStore(self.settings.results_database_url)

    def cli(self, *args: str, timeout: float = 300.0, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [sys.executable, "-m", "mtserve_cli", *args],
            env={**self.env, **(env or {})},
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"mtserve {' '.join(args)} exited {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}")
        # Every command run here: no traceback on stderr, not even one Python
        # prints while it shuts down ("Exception ignored in AsyncResult.__del__"
        # ended every `batch submit` once).
        assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
        return out

    def start_worker(self, name: str, *, env: dict[str, str] | None = None, ready: bool = True) -> WorkerProc:
        w = WorkerProc({**self.env, **(env or {})}, self.root / f"worker-{name}.log", name)
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
        except Exception:  # noqa: BLE001,S110 - a test's own Redis may be gone already
            pass


def make_env(
    root: Path,
    checkpoint: Path,
    *,
    broker_url: str = LOCAL_REDIS,
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    **batch: Any,
) -> BatchEnv:
    """Environment variables for the CLI and the workers of one isolated setup.
    Short timeouts so a dead worker's chunk comes back in seconds."""
    tag = uuid.uuid4().hex[:10]
    root.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "scorer": "local",
        "checkpoint": str(checkpoint),
        "broker_url": broker_url,
        "queue": f"mtserve-test-{tag}",
        "key_prefix": f"mtserve-test-{tag}:",
        "results_database_url": database_url or f"sqlite:///{root / 'results.db'}",
        "output_dir": str(root / "out"),
        "chunk_size": 25,
        "conversations_per_call": 8,
        "visibility_timeout": 12,
        "chunk_time_limit": 10,
        "restore_interval": 1,
        "retry_backoff_max": 5,
        "stall_seconds": 20,
        # Off: several workers run at once in some tests (test_metrics turns it on).
        "metrics_address": "",
    }
    values.update(batch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTSERVE_")}
    env.update({f"MTSERVE_BATCH__{k.upper()}": str(v) for k, v in values.items()})
    env.update(
        MTSERVE_HOME=os.environ["MTSERVE_HOME"],
        MTSERVE_DEVICE="cpu",
        MTSERVE_DTYPE="float32",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        # Two cores shared with the test process: one torch thread per worker
        # process keeps the machine responsive (the answers do not depend on it).
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
    )
    env.update(extra_env or {})
    load_settings(env=env)  # fail here, naming the key, rather than in a subprocess
    return BatchEnv(root=root, env=env, broker_url=broker_url, key_prefix=values["key_prefix"])


@pytest.fixture(scope="session")
def make_batch_env() -> Callable[..., BatchEnv]:
    """`make_env` for test modules (they cannot import this conftest)."""
    return make_env


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., Any]:
    """poll_until(predicate, timeout, what): the predicate's first truthy value."""
    return poll_until


@pytest.fixture(scope="session")
def local_redis() -> str:
    problem = redis_reachable(LOCAL_REDIS)
    if problem:
        message = f"Redis at {redact(LOCAL_REDIS)} is unreachable ({problem}); the Celery tests need it"
        if os.environ.get("TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(message + "; TEST_REQUIRE_SERVICES=1 (scripts/test.sh) requires it: run scripts/setup.sh")
        pytest.skip(message)
    return LOCAL_REDIS


@pytest.fixture
def batch_env(tmp_path: Path, tiny_llama_dir: Path, local_redis: str) -> Iterator[BatchEnv]:
    env = make_env(tmp_path / "batch", tiny_llama_dir, broker_url=local_redis)
    try:
        yield env
    finally:
        env.cleanup()


# -- Redis of its own, with append-only persistence ------------------------------------------
class OwnRedis:
    """A `redis-server` on a free port, persisting to an append-only file in
    a temporary folder, so a restart keeps what was written (the machine's
    Redis keeps nothing on disk)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.password = secrets.token_hex(16)  # a password, as every Redis the project starts
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed"
        conf = self.folder / "redis.conf"  # the password in a file, not on the command line
        conf.write_text(f"requirepass {self.password}\n", encoding="utf-8")
        self.proc = subprocess.Popen(
            [exe, str(conf), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--daemonize", "no", "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        poll_until(lambda: redis_reachable(self.url) is None, 20, f"redis-server on port {self.port}")
        return self

    def crash(self) -> None:
        """SIGKILL: no shutdown save; what reached the append-only file survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
