"""Follows the registry for an inference replica: apply the last-known-good
copy at once (so a replica starts and serves while the registry is down),
then watch the registry (a snapshot, then changes), applying each event and
saving it as the new last-known-good copy. A lost stream is reopened with
exponential backoff and jitter, forever; serving continues meanwhile."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtserve.errors import MtserveError
from mtserve.records import RegistryState
from services.inference.core import InferenceCore
from services.inference.state import load_state, save_state

log = logging.getLogger(__name__)


class RegistryWatcher:
    def __init__(
        self,
        core: InferenceCore,
        address: str,
        state_file: str | Path | None,
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        name: str = "inference",
        client_factory: Callable[[str], Any] | None = None,
        settings: Any = None,
    ):
        """`settings`: the server's, whose credentials (token, TLS) the
        watch stream uses (None: this process's load_settings())."""
        self.core = core
        self.address = address
        self.state_file = Path(state_file) if state_file else None
        self.initial_backoff, self.max_backoff = initial_backoff, max_backoff
        self.name = name
        self.settings = settings
        self.client_factory = client_factory or self._client
        self.state: RegistryState | None = None
        self.connects = 0  # streams opened that delivered a snapshot
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="registry-watch", daemon=True)

    def _client(self, address: str) -> Any:
        from mtserve_api.registry import RegistryClient

        return RegistryClient(address, keepalive=True, settings=self.settings)

    def start(self) -> RegistryWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the loop ---------------------------------------------------------------------------
    def _apply(self, state: RegistryState, source: str) -> None:
        self.core.apply(state, source)
        self.state = state
        if source == "registry" and self.state_file is not None:
            try:
                save_state(self.state_file, state)
            except OSError as exc:  # serving matters more than the copy
                log.error("cannot save the last-known-good state to %s: %s", self.state_file, exc)

    def _run(self) -> None:
        if self.state_file is not None:
            saved = load_state(self.state_file)
            if saved is not None:
                log.info("serving the last-known-good state (revision %d) from %s until the registry answers", saved.revision, self.state_file)
                try:
                    self._apply(saved, "last-known-good")
                except MtserveError as exc:
                    log.error("cannot apply the last-known-good state: %s", exc)
        client = self.client_factory(self.address)
        backoff = self.initial_backoff
        try:
            while not self._stop.is_set():
                try:
                    self._stream = client.watch(self.name)
                    if self._stop.is_set():
                        break
                    for snapshot, event in self._stream:
                        if snapshot:
                            self.connects += 1
                            backoff = self.initial_backoff
                            self.core.registry_connected = True
                            state = event
                        else:
                            assert self.state is not None  # a stream starts with a snapshot
                            state = self.state.apply(event)
                        self._apply(state, "registry")
                    if not self._stop.is_set():
                        log.warning("the registry at %s ended the watch stream; reconnecting", self.address)
                except MtserveError as exc:
                    if not self._stop.is_set():
                        log.warning("registry watch at %s lost (%s); serving revision %s meanwhile", self.address, exc, self.state.revision if self.state else "none")
                except Exception:
                    log.exception("registry watch failed; reconnecting")
                self.core.registry_connected = False
                # Jitter spreads the reconnects of many replicas after a registry restart.
                if self._stop.wait(backoff * random.uniform(0.5, 1.0)):
                    break
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            self.core.registry_connected = False
            client.close()
