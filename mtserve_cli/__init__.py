"""The `mtserve` command: one typer app, `mtserve <noun> <verb>`.

The top floor: it may import every package below it (services, trainer,
batch, the API floor, the core) and nothing imports it. Its commands import
what they use inside their bodies, so `mtserve models ...` never loads grpc
or celery.
"""

from __future__ import annotations

import os
import sys

import typer

from mtserve.errors import MtserveError

# Each noun lives in its own module; importing it attaches its commands to
# `app`. They import what they call inside each command, so `mtserve models`
# loads neither grpc nor celery.
from mtserve_cli import batch, bench, core, demo, logs, registry, serve, status, tls, tokens, train  # noqa: F401
from mtserve_cli.root import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
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
    except Exception as exc:  # usage errors (a missing argument, a bad option value)
        # typer >= 0.29 vendors click (typer._click), so its usage errors are
        # not click's classes: both have `show` and `exit_code`.
        import click

        if isinstance(exc, (click.ClickException, typer.TyperException)) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise
