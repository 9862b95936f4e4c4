"""The last-known-good copy of the registry state, so that a replica keeps
serving through a registry outage and can even start while the registry is
down. Written atomically (temporary file, fsync, rename): a crash mid-write
leaves the previous copy, never half of one."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from mtserve.errors import ValidationError
from mtserve.records import RegistryState

log = logging.getLogger(__name__)

FORMAT = "mtserve.inference-state/1"


def save_state(path: str | Path, state: RegistryState) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"format": FORMAT, **state.to_dict()}, ensure_ascii=False, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: str | Path) -> RegistryState | None:
    """The saved state, or None when there is none. A damaged file is
    reported and ignored: serving nothing beats serving a guess."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        log.error("ignoring the last-known-good state %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        log.error("ignoring the last-known-good state %s: not an %s file", path, FORMAT)
        return None
    try:
        return RegistryState.from_dict(data, str(path))
    except ValidationError as exc:
        log.error("ignoring the last-known-good state %s: %s", path, exc)
        return None
