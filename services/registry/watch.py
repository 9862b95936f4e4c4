"""The registry side of Watch, as plain Python: a snapshot, then one change
per committed revision, computed as the difference between two snapshots so
that a promotion of many routes arrives as one change (and is applied as one
step by the watcher)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from mtserve.errors import UnavailableError
from mtserve.records import RegistryState
from services.registry.store import RegistryStore


def watch_states(
    store: RegistryStore, stop: threading.Event, *, poll_seconds: float, is_active: Callable[[], bool] = lambda: True
) -> Iterator[tuple[bool, RegistryState]]:
    """Yield (True, snapshot) once, then (False, change) per revision, until
    the caller goes away (`is_active` false) or `stop` is set, which ends the
    stream with UnavailableError so watchers reconnect to another replica."""
    state = store.snapshot()
    yield True, state
    while is_active():
        if stop.is_set():
            raise UnavailableError("the registry is shutting down; reconnect to another replica")
        revision = store.wait_for_change(state.revision, poll_seconds)
        if stop.is_set():
            continue
        if revision == state.revision:
            continue
        new = store.snapshot()
        change = new.changes_since(state)
        state = new
        if change is not None:
            yield False, change
