"""The `mtserve` command: one typer app, `mtserve <noun> <verb>`.

This package is the one part of the core allowed to reach the services and
the workers; it imports their clients inside the commands that need them, so
`mtserve models ...` never loads grpc or celery.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from mtserve.config import Settings, load_settings
from mtserve.errors import MtserveError

app = typer.Typer(
    name="mtserve",
    help="Serve many text-classification tasks from one multi-task fine-tuned language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _State:
    config_file: Optional[Path] = None
    settings: Optional[Settings] = None


state = _State()


def settings(**overrides: Any) -> Settings:
    """The settings for this invocation: defaults < --config file < MTSERVE_* < flags."""
    if state.settings is None or overrides:
        state.settings = load_settings(state.config_file, overrides=overrides)
    return state.settings


@app.callback()
def _root(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file (also MTSERVE_CONFIG)."),
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


def _register() -> None:
    # Each noun lives in its own module; importing it attaches its commands.
    from mtserve.cli import core  # noqa: F401

    for optional in ("registry", "serve", "train", "batch", "logs", "bench", "demo"):
        try:
            __import__(f"mtserve.cli.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mtserve.cli.{optional}":
                raise


_register()


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: domain errors become one line on stderr and exit code 2,
    never a traceback."""
    # Library progress bars (weights loading) would interleave with ours and
    # with one-line errors; offline is the only mode this machine has.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "transformers" in sys.modules:  # already imported (in-process callers): switch its bars off too
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        # Without standalone mode click *returns* the code of a typer.Exit
        # (raised by `fail`) instead of raising it: pass it on.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except MtserveError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
