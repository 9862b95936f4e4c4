"""The typer app every command attaches to, the invocation's settings and
the one way a command fails. Its own module, below the command modules, so
that they import it and the package imports them without a cycle."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import typer

from mtserve.config import Settings, load_settings

app = typer.Typer(
    name="mtserve",
    help="Serve many text-classification tasks from one multi-task fine-tuned language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _State:
    config_file: Path | None = None
    settings: Settings | None = None


state = _State()


def settings(**overrides: Any) -> Settings:
    """The settings for this invocation: defaults < --config file < MTSERVE_* < flags."""
    if state.settings is None or overrides:
        state.settings = load_settings(state.config_file, overrides=overrides)
    return state.settings


@app.callback()
def _root(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML settings file (also MTSERVE_CONFIG)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    state.config_file = config
    state.settings = None
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
