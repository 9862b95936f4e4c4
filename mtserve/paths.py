"""Paths that callers send to a service (a checkpoint folder, a job's base
folder and output folders): checked as text first, then confined to the
folders the service may touch.

Every refusal is a ValidationError (INVALID_ARGUMENT) that quotes the
caller's own string and names no server path: not the resolved folder, not
the service's working directory or home, not the roots themselves. A path is
checked against the roots before anything is read at it, so a caller learns
nothing about which folders exist outside them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mtserve.errors import ValidationError

# Linux's PATH_MAX and NAME_MAX: beyond them the OS fails with an error that
# used to escape as INTERNAL.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def caller_path(value: str, field: str, *, relative_ok: bool = False) -> Path:
    """`value` as a path, or ValidationError naming `field`, the rule and the
    value. `~` is not expanded (it would be the server's home), and a
    relative path is refused unless `relative_ok` (it would be read from the
    server's working directory)."""
    if not value.strip():
        raise ValidationError(field, "must name a folder", value)
    if "\x00" in value:
        raise ValidationError(field, "must not contain a NUL character", value)
    if len(os.fsencode(value)) > MAX_PATH_BYTES:
        raise ValidationError(field, f"must be at most {MAX_PATH_BYTES} bytes", value)
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in value.split("/")):
        raise ValidationError(field, f"must not have a name over {MAX_NAME_BYTES} bytes", value)
    if value.startswith("~"):
        raise ValidationError(field, "must be an absolute path (~ is not expanded on the server)", value)
    if not value.startswith("/") and not relative_ok:
        raise ValidationError(field, "must be an absolute path (a relative one would be read from the server's working folder)", value)
    return Path(value)


def confined_path(value: str, field: str, roots: Sequence[Path], where: str, *, base: Path | None = None) -> Path:
    """`value` checked by caller_path and resolved (so `..` and symbolic
    links cannot lead out), inside one of `roots` (already resolved), or
    ValidationError "must be inside {where}" quoting the caller's string.
    With `base`, a relative value is taken relative to it (a job spec's paths,
    relative to the job's folder)."""
    path = caller_path(value, field, relative_ok=base is not None)
    if base is not None:
        path = base / path
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop, a component the OS refuses
        raise ValidationError(field, f"must be inside {where}", value) from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ValidationError(field, f"must be inside {where}", value)
    return resolved


__all__ = ["MAX_NAME_BYTES", "MAX_PATH_BYTES", "caller_path", "confined_path"]
