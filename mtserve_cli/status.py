"""`mtserve status`: every registry, inference replica and batch worker it is
pointed at, in one view: health, the release that answered, and what each
holds (route table revision, loaded checkpoints, queue depth). Exit 1 when
any of them is unreachable or not serving, so scripts can gate on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import typer

from mtserve_cli.root import app, settings

REGISTRY_SERVICE, INFERENCE_SERVICE = "mtserve.v1.Registry", "mtserve.v1.Inference"


@dataclass
class Component:
    kind: str  # registry | inference | workers
    address: str
    health: str  # SERVING, NOT_SERVING, UNREACHABLE, ...
    version: str = "-"
    detail: dict[str, Any] = field(default_factory=dict)


def health_and_version(address: str, service: str, s: Any) -> tuple[str, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mtserve_api.client import connect

    try:
        with connect(address, settings=s) as channel:
            response, call = health_pb2_grpc.HealthStub(channel).Check.with_call(health_pb2.HealthCheckRequest(service=service), timeout=5)
    except grpc.RpcError as exc:
        return ("UNREACHABLE" if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else exc.code().name), "-"
    version = dict(call.trailing_metadata() or ()).get("x-mtserve-version", "-")
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status), str(version)


def service_status(kind: str, address: str, service: str, s: Any, state: Callable[[], dict[str, Any]]) -> Component:
    """A gRPC service's health and release, and `state()` (what it holds)
    when it answers; a failure of either is this component's, reported."""
    from mtserve.errors import MtserveError

    try:
        health, version = health_and_version(address, service, s)
    except MtserveError as exc:  # no CA to trust, a token that cannot be read
        return Component(kind, address, "ERROR", detail={"error": str(exc)})
    component = Component(kind, address, health, version)
    if health != "UNREACHABLE":
        try:
            component.detail = state()
        except MtserveError as exc:
            component.detail = {"error": str(exc)}
    return component


def registry_status(address: str, s: Any) -> Component:
    from mtserve_api.registry import RegistryClient

    def state() -> dict[str, Any]:
        with RegistryClient(address, timeout=10, settings=s) as client:
            routes, revision = client.get_routes()
            return {"revision": revision, "tasks": len(client.list_tasks()), "routes": len(routes)}

    return service_status("registry", address, REGISTRY_SERVICE, s, state)


def inference_status(address: str, s: Any) -> Component:
    from mtserve_api.inference import InferenceClient

    def state() -> dict[str, Any]:
        with InferenceClient(address, timeout=10, settings=s) as client:
            info = client.model_info()
        return {
            "registry_revision": info.registry_revision, "registry_connected": info.registry_connected,
            "loaded": [c.id for c in info.checkpoints if c.loaded], "queue_depth": info.queue_depth,
            "dtype": {c.id: c.dtype for c in info.checkpoints if c.loaded},
        }

    return service_status("inference", address, INFERENCE_SERVICE, s, state)


def workers_status(s: Any) -> Component:
    """Batch workers answering a Celery ping, and the depth of their queue."""
    from batch.celery_app import make_app
    from batch.dispatch import CeleryEnqueuer

    celery = make_app(s)
    try:
        replies = celery.control.ping(timeout=2.0) or []
    except Exception as exc:  # noqa: BLE001 - the broker is down or refuses: reported, not raised
        return Component("workers", s.batch.broker_url, "UNREACHABLE", detail={"error": f"{type(exc).__name__}: {exc}"})
    names = sorted(name for reply in replies for name in reply)
    depth = CeleryEnqueuer(celery).queue_depth()
    return Component("workers", s.batch.broker_url.split("@")[-1], "SERVING" if names else "NOT_SERVING",
                     detail={"workers": names, "queue": s.batch.queue, "queue_depth": depth})


@app.command("status")
def status_cmd(
    registry: list[str] = typer.Option(None, "--registry", help="Registry HOST:PORT (repeat; default: registry.address)."),
    inference: list[str] = typer.Option(None, "--inference", help="Inference replica HOST:PORT (repeat; default: inference.address)."),
    workers: bool = typer.Option(True, "--workers/--no-workers", help="Also ping the batch workers through the broker."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Health, version and state of every registry, inference replica and batch worker."""
    import json

    s = settings()
    components = [registry_status(a, s) for a in registry or [s.registry.address]]
    components += [inference_status(a, s) for a in inference or [s.inference.address]]
    if workers:
        components.append(workers_status(s))
    if as_json:
        typer.echo(json.dumps([asdict(c) for c in components], indent=2))
    else:
        from mtserve_cli.registry import _table

        rows = [[c.kind, c.address, c.health, c.version, ", ".join(f"{k}={v}" for k, v in c.detail.items())] for c in components]
        _table(None, ["component", "address", "health", "version", "state"], rows)
    if any(c.health != "SERVING" for c in components):
        raise typer.Exit(1)


health_app = typer.Typer(help="grpc.health.v1 of one server: for container health checks and scripts.", no_args_is_help=True)
app.add_typer(health_app, name="health")


@health_app.command("check")
def health_check_cmd(
    address: str = typer.Argument(..., help="HOST:PORT of one server."),
    service: str = typer.Option("", "--service", help='The service to ask about (mtserve.v1.Registry, mtserve.v1.Inference, ...; "": the server).'),
) -> None:
    """Print the server's health (SERVING, NOT_SERVING, UNREACHABLE, ...); exit 0 only when SERVING.
    Health needs no token; TLS is as for every client (tls.ca_file or the local CA)."""
    from mtserve.errors import MtserveError

    try:
        health, _version = health_and_version(address, service, settings())
    except MtserveError as exc:  # no CA to trust
        typer.echo(f"ERROR: {exc}")
        raise typer.Exit(1) from None
    typer.echo(health)
    if health != "SERVING":
        raise typer.Exit(1)
