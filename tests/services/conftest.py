"""Fixtures for the gRPC services: real servers on port 0, real SQLite files
and the real PostgreSQL on 127.0.0.1:5432 (a throw-away schema per use),
tiny random checkpoints from the session fixtures."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mtserve.config import Settings, load_settings
from mtserve.inputs import Input, input_from_dict
from mtserve.tasks import Catalogue

SAMPLES = Path(__file__).resolve().parents[2] / "mtserve" / "samples"


def sample(name: str) -> Input:
    return input_from_dict(json.loads((SAMPLES / f"{name}.json").read_text(encoding="utf-8")), name)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll until `predicate()` is truthy. The timeout only guards against a
    hang (it fails the test with `what`); nothing asserts on elapsed time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = {
        "device": "cpu",
        "dtype": "float32",
        "registry.database_url": f"sqlite:///{tmp_path / 'registry.db'}",
        "registry.watch_poll_seconds": 0.5,
        "registry.shutdown_grace_seconds": 5,
        "inference.state_file": str(tmp_path / "inference-state.json"),
        "inference.reconnect_initial_seconds": 0.05,
        "inference.reconnect_max_seconds": 0.5,
        "inference.shutdown_grace_seconds": 10,
        "inference.max_wait_ms": 5,
        "inference.max_workers": 64,
        # Metrics endpoints off: many services share one test process (tests/services/test_metrics.py turns them on).
        "registry.metrics_address": "",
        "inference.metrics_address": "",
        "trainer.metrics_address": "",
        # Above the 50 concurrent clients of test_concurrency (the default, 48,
        # would refuse two of them: admission is tested on its own).
        "inference.max_inflight_calls": 56,
        # Test checkpoints live in the run's temporary folders (tampered copies,
        # job outputs): all of them are a checkpoint root here.
        "registry.checkpoint_roots": [str(tmp_path.parent)],
        "trainer.root": str(tmp_path.parent),  # and hold the jobs the trainer service runs
    }
    base.update(overrides)
    return load_settings(overrides=base, env={})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each registry-store test runs on a fresh SQLite file and on a fresh
    PostgreSQL schema (tests/conftest.py's `postgres_url`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


# -- running services ------------------------------------------------------------------------
@dataclass
class Stack:
    """A registry and (optionally) an inference service, with clients."""

    settings: Settings
    registry: Any
    registry_address: str
    inference: Any = None
    inference_address: str = ""
    clients: list[Any] = field(default_factory=list)

    def registry_client(self, timeout: float = 30.0) -> Any:
        from mtserve_api.registry import RegistryClient

        client = RegistryClient(self.registry_address, timeout=timeout, settings=self.settings)
        self.clients.append(client)
        return client

    def inference_client(self, timeout: float = 60.0, **kw: Any) -> Any:
        from mtserve_api.inference import InferenceClient

        client = InferenceClient(self.inference_address, timeout=timeout, **{"settings": self.settings, **kw})
        self.clients.append(client)
        return client

    def start_inference(self, settings: Settings | None = None, **kw: Any) -> Any:
        from services.inference.server import create_server

        self.inference, port = create_server("127.0.0.1:0", settings or self.settings, registry_address=self.registry_address, **kw)
        self.inference.start()
        self.inference_address = f"127.0.0.1:{port}"
        return self.inference

    def wait_synced(self, revision: int | None = None) -> None:
        """Wait until the inference service serves the registry's revision."""
        if revision is None:
            revision = self.registry.store.revision()
        core = self.inference.core
        wait_for(lambda: core.serving is not None and core.serving.state.revision >= revision, f"inference to reach revision {revision}")

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        if self.inference is not None:
            self.inference.stop(grace=2)
        self.registry.stop(grace=1)


def start_registry(settings: Settings, store: Any = None, address: str = "127.0.0.1:0") -> tuple[Any, str]:
    from services.registry.server import create_server

    service, port = create_server(address, settings, store=store)
    service.start()
    return service, f"127.0.0.1:{port}"


def start_stack(settings: Settings, hotel: Catalogue, checkpoints: list[Path], *, route_to: str | None = None, inference: bool = True) -> Stack:
    """Registry with the hotel catalogue and the given checkpoints registered,
    every task routed to `route_to` (default: the first checkpoint), and an
    inference service synced to it."""
    from mtserve.records import RouteChange

    registry, address = start_registry(settings)
    stack = Stack(settings, registry, address)
    client = stack.registry_client()
    client.apply_catalogue(hotel)
    ids = [client.register_checkpoint(str(p))[0].id for p in checkpoints]
    if ids:
        client.set_routes([RouteChange(t.name, route_to or ids[0]) for t in hotel.tasks], reason="test setup")
    if inference:
        stack.start_inference()
        stack.wait_synced()
    return stack


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, hotel, tiny_llama_dir, tiny_qwen_dir) -> Iterator[Stack]:
    """A registry and an inference service for read-only tests: the hotel
    catalogue, both tiny checkpoints registered, every task on tiny-llama.
    Tests that change the registry start their own stack."""
    stack = start_stack(make_settings(tmp_path_factory.mktemp("served")), hotel, [tiny_llama_dir, tiny_qwen_dir], route_to="tiny-llama")
    yield stack
    stack.stop()


def classification_input(task: Any) -> Input:
    """A sample input a hotel task reads."""
    if task.input_kind.value == "conversation":
        return sample("call-cancelled" if "call" in [c.value for c in task.channels] else "im-invoice")
    return sample("email" if "email" in [c.value for c in task.channels] else "review")
