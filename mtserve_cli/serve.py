"""`mtserve serve registry|inference|trainer`: run a gRPC service until SIGINT or
SIGTERM, then shut down gracefully (health NOT_SERVING, new calls refused,
calls in flight finish within the grace period)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer

from mtserve_cli.root import app, settings, state

serve_app = typer.Typer(help="Run the gRPC services.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")

ConfigOption = typer.Option(None, "--config", "-c", help="YAML settings file (same as `mtserve --config`).")


def _settings(config: Path | None, **overrides: Any) -> Any:
    if config is not None:
        state.config_file = config
        state.settings = None
    from services.common.logs import configure_service_logging

    s = settings(**overrides)
    configure_service_logging(s.log_format, s.log_level, customer_text=s.log_customer_text)
    # alembic announces each of its plugins at INFO; the migration lines stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    return s


def _run(service: Any, name: str, address: str, port: int) -> None:
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("mtserve.serve").info("%s: got %s, shutting down", name, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    host = address.rsplit(":", 1)[0]
    # One line on stdout, flushed: scripts (and tests) binding port 0 read the port here.
    typer.echo(f"{name} listening on {host}:{port}")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    service.stop()
    logging.getLogger("mtserve.serve").info("%s stopped", name)


@serve_app.command("registry")
def serve_registry(
    config: Path | None = ConfigOption,
    address: str | None = typer.Option(None, "--address", help="HOST:PORT to listen on (default: registry.address; port 0 = any free port)."),
    database_url: str | None = typer.Option(None, "--database-url", help="sqlite:///FILE or postgresql+psycopg://... (default: registry.database_url)."),
) -> None:
    """The task registry (migrates its database to the newest schema at start)."""
    from services.registry.server import create_server

    s = _settings(config, **{"registry.address": address, "registry.database_url": database_url})
    service, port = create_server(s.registry.address, s)
    _run(service, "registry", s.registry.address, port)


@serve_app.command("inference")
def serve_inference(
    config: Path | None = ConfigOption,
    address: str | None = typer.Option(None, "--address", help="HOST:PORT to listen on (default: inference.address; port 0 = any free port)."),
    registry: str | None = typer.Option(None, "--registry", help="Registry HOST:PORT to follow (default: inference.registry_address)."),
    state_file: str | None = typer.Option(None, "--state-file", help="Last-known-good state copy (default: inference.state_file)."),
) -> None:
    """The inference service (follows the registry; serves from its last-known-good copy while the registry is down)."""
    from mtserve.threads import apply_torch_threads
    from services.inference.server import create_server

    s = _settings(config, **{"inference.address": address, "inference.registry_address": registry, "inference.state_file": state_file})
    apply_torch_threads(s.torch_threads, who="inference")  # the whole process is one model server
    service, port = create_server(s.inference.address, s)
    _run(service, "inference", s.inference.address, port)


@serve_app.command("trainer")
def serve_trainer(
    config: Path | None = ConfigOption,
    address: str | None = typer.Option(None, "--address", help="HOST:PORT to listen on (default: trainer.address; port 0 = any free port)."),
    registry: str | None = typer.Option(None, "--registry", help="Registry HOST:PORT jobs register and promote in (default: trainer.registry_address)."),
) -> None:
    """The trainer service: queues jobs on the Celery `train` queue (run by
    `mtserve train worker` on the GPU machines) and reports them from the job
    records in trainer.database_url; stopping it leaves running jobs alone."""
    from services.trainer.server import create_server

    s = _settings(config, **{"trainer.address": address, "trainer.registry_address": registry})
    service, port = create_server(s.trainer.address, s)
    _run(service, "trainer", s.trainer.address, port)
