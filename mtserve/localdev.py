"""The password-protected Redis and PostgreSQL that scripts/setup.sh starts on
loopback for the tests and the demo: their URLs, from the owner-only file
setup writes (`$TMPDIR/mtserve-local-<uid>/services.env`, lines `NAME=URL`).
Production settings never read this file; they name their own servers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def local_state_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"mtserve-local-{os.getuid()}"


def local_services() -> dict[str, str]:
    """LOCAL_REDIS_URL and LOCAL_POSTGRES_URL, or {} before setup has run."""
    path = local_state_dir() / "services.env"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
