"""A registry and an inference service in this process, on a fresh home,
for the gRPC measures: the hotel catalogue, one checkpoint, every task
routed to it. Secured as the README starts them (TLS from the home's local
CA, a bearer token on every call) unless `secured=False`, which turns both
off (allowed on loopback only) for the plaintext figure beside it."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtserve.config import Settings, load_settings
from mtserve.inputs import Input
from mtserve.records import RouteChange
from mtserve.tasks import Catalogue


@dataclass(frozen=True)
class Served:
    address: str
    settings: Settings  # the clients' settings: they find the home's CA and admin token
    service: Any

    def client(self, timeout: float = 300.0) -> Any:
        from mtserve_api.inference import InferenceClient

        return InferenceClient(self.address, timeout=timeout, settings=self.settings)


def stack_settings(home: Path, checkpoint: Path, *, secured: bool, batch_overrides: dict[str, Any] | None = None) -> Settings:
    overrides: dict[str, Any] = {
        "home": str(home), "checkpoints_dir": str(checkpoint.parent), "device": "cpu", "dtype": "float32",
        # Metrics endpoints off: their fixed ports would clash between the stacks of one run.
        "registry.metrics_address": "", "inference.metrics_address": "",
        **(batch_overrides or {}),
    }
    if not secured:
        overrides |= {"tls.enabled": False, "auth.enabled": False}
    # env={}: the measured configuration is the defaults, not this shell's MTSERVE_* variables.
    return load_settings(overrides=overrides, env={})


@contextmanager
def serving(checkpoint: Path, cat: Catalogue, probe: Input, *, work_dir: Path, secured: bool = True,
            overrides: dict[str, Any] | None = None) -> Iterator[Served]:
    """Start the stack, wait until `probe` is classified (the model is loaded), yield it, stop it."""
    from mtserve_api.registry import RegistryClient
    from services.inference.server import create_server as inference_server
    from services.registry.server import create_server as registry_server

    home = Path(tempfile.mkdtemp(prefix="home-", dir=work_dir))
    s = stack_settings(home, checkpoint, secured=secured, batch_overrides=overrides)
    registry, rport = registry_server("127.0.0.1:0", s)
    registry.start()
    inference = None
    try:
        raddr = f"127.0.0.1:{rport}"
        with RegistryClient(raddr, timeout=600, settings=s) as client:
            client.apply_catalogue(cat, reason="benchmark")
            record, _ = client.register_checkpoint(str(checkpoint), timeout=600, reason="benchmark")
            client.set_routes([RouteChange(t.name, record.id) for t in cat.tasks], reason="benchmark")
        inference, iport = inference_server("127.0.0.1:0", s, registry_address=raddr)
        inference.start()
        served = Served(f"127.0.0.1:{iport}", s, inference)
        task = next(t for t in cat.tasks if not t.is_generation and t.applies_to(probe.kind, getattr(probe, "channel", None)))
        _wait_ready(served, task.name, probe)
        yield served
    finally:
        if inference is not None:
            inference.stop(grace=5)
        registry.stop(grace=1)


def _wait_ready(served: Served, task: str, probe: Input, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    with served.client() as client:
        while True:
            try:
                client.classify(task, probe)
                return
            except Exception:  # not ready yet (the model is loading); the deadline bounds it
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
