"""Reading the text files users hand to mtserve (catalogues, job specs,
settings, inputs): every failure is one ValidationError line naming the field,
the rule and the file, never a library traceback or a multi-line YAML report
with a caret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mtserve.errors import ValidationError


def read_text(path: str | Path, field: str) -> str:
    """A UTF-8 text file's contents; a missing, unreadable or binary file is
    a ValidationError naming `field`."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(field, f"cannot read file ({exc.strerror or exc})", str(path)) from None
    except UnicodeDecodeError as exc:
        raise ValidationError(field, f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})", str(path)) from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What a YAML parser said, on one line: the problem and where."""
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "syntax error"
        mark = exc.problem_mark or exc.context_mark
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem
    return " ".join(str(exc).split())


def parse_yaml(text: str, where: str) -> Any:
    """`text` as YAML; a syntax error is one line naming `where`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError(where, f"is not valid YAML: {yaml_problem(exc)}", None, show_value=False) from None


def load_yaml(path: str | Path, field: str) -> Any:
    """A YAML file: read_text, then parse_yaml (errors name the file)."""
    return parse_yaml(read_text(path, field), str(path))


__all__ = ["load_yaml", "parse_yaml", "read_text", "yaml_problem"]
