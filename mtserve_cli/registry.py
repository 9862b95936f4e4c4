"""`mtserve tasks|routes|checkpoints ...`: the task registry, over gRPC.

The registry client (and grpc with it) is imported inside each command, so
other commands never load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mtserve_cli.root import app, settings

tasks_app = typer.Typer(help="Task definitions in the registry (versioned).", no_args_is_help=True)
routes_app = typer.Typer(help="Which checkpoint serves each task (with history and rollback).", no_args_is_help=True)
checkpoints_app = typer.Typer(help="Checkpoints registered with the registry.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(routes_app, name="routes")
app.add_typer(checkpoints_app, name="checkpoints")

RegistryOption = typer.Option(None, "--registry", help="Registry address HOST:PORT (default: settings registry.address).")
JsonOption = typer.Option(False, "--json", help="Print JSON.")
WriteReasonOption = typer.Option("", "--reason", help="Why: kept in the registry's audit log (`mtserve audit`).")


def _client(address: str | None) -> Any:
    from mtserve_api.registry import RegistryClient

    s = settings()
    return RegistryClient(address or s.registry.address, timeout=s.registry.client_timeout_seconds, settings=s)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _table(title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


# -- tasks ----------------------------------------------------------------------------
@tasks_app.command("apply")
def tasks_apply(
    file: Path = typer.Option(..., "--file", "-f", help="Catalogue YAML (tasks and truncation budgets)."),
    reason: str = WriteReasonOption,
    registry: str | None = RegistryOption,
    as_json: bool = JsonOption,
) -> None:
    """Register every task of a catalogue (a changed task gets a new version)
    and its truncation policy, in one transaction."""
    from mtserve.tasks import load_catalogue

    catalogue = load_catalogue(file)  # validated here first: errors name the file's fields
    with _client(registry) as client:
        results, revision = client.apply_catalogue(catalogue, reason=reason)
    if as_json:
        _echo_json({"revision": revision, "tasks": [{"name": r.record.name, "version": r.record.version, "changed": r.changed} for r in results]})
        return
    for r in results:
        typer.echo(f"{r.record.name}\tv{r.record.version}\t{'changed' if r.changed else 'unchanged'}")
    changed = sum(r.changed for r in results)
    typer.echo(f"{len(results)} tasks from catalogue {catalogue.name!r}: {changed} changed; registry revision {revision}", err=True)


@tasks_app.command("list")
def tasks_list(
    channel: str | None = typer.Option(None, "--channel", help="Only tasks of this channel (call, im, email, review)."),
    taxonomy: str | None = typer.Option(None, "--taxonomy", help="Only tasks of this taxonomy."),
    status: str | None = typer.Option(None, "--status", help="active | retired (default: both)."),
    registry: str | None = RegistryOption,
    as_json: bool = JsonOption,
) -> None:
    """The latest version of every task."""
    from mtserve.errors import ValidationError
    from mtserve.records import TaskStatus
    from mtserve.tasks import Channel, Taxonomy

    def parse(enum_cls: Any, value: str | None, flag: str) -> Any:
        if value is None:
            return None
        try:
            return enum_cls(value)
        except ValueError:
            raise ValidationError(flag, f"must be one of {', '.join(m.value for m in enum_cls)}", value) from None

    filters = {
        "channel": parse(Channel, channel, "--channel"), "taxonomy": parse(Taxonomy, taxonomy, "--taxonomy"), "status": parse(TaskStatus, status, "--status")
    }
    with _client(registry) as client:
        records = client.list_tasks(**filters)
    if as_json:
        _echo_json([{**r.task.to_dict(), "status": r.status.value, "created_at": r.created_at} for r in records])
        return
    _table(
        None,
        ["task", "version", "status", "taxonomy", "input", "channels", "title"],
        [
            [r.name, str(r.version), r.status.value, r.task.taxonomy.value, r.task.input_kind.value, ",".join(c.value for c in r.task.channels), r.task.title]
            for r in records
        ],
    )


@tasks_app.command("show")
def tasks_show(
    name: str = typer.Argument(..., help="Task name."),
    version: int | None = typer.Option(None, "--version", help="A version (default: the latest)."),
    registry: str | None = RegistryOption,
    as_json: bool = JsonOption,
) -> None:
    """One task's definition (as catalogue YAML), status and version."""
    import yaml

    with _client(registry) as client:
        record = client.get_task(name, version)
    body = {**record.task.to_dict(), "status": record.status.value, "latest_version": record.latest_version, "created_at": record.created_at}
    if as_json:
        _echo_json(body)
        return
    typer.echo(yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100).rstrip())


@tasks_app.command("retire")
def tasks_retire(
    name: str = typer.Argument(..., help="Task name."), reason: str = WriteReasonOption, registry: str | None = RegistryOption
) -> None:
    """Stop serving a task (it stays listed with --status retired; registering it again revives it)."""
    with _client(registry) as client:
        record = client.retire_task(name, reason=reason)
    typer.echo(f"{record.name}\tv{record.version}\t{record.status.value}")


# -- routes --------------------------------------------------------------------------------
def _route_dict(route: Any) -> dict[str, Any]:
    return {"task": route.task, "task_version": route.task_version, "checkpoint": route.checkpoint_id, "updated_at": route.updated_at, "reason": route.reason}


@routes_app.command("show")
def routes_show(registry: str | None = RegistryOption, as_json: bool = JsonOption) -> None:
    """The route table: each task's version and checkpoint."""
    with _client(registry) as client:
        routes, revision = client.get_routes()
    if as_json:
        _echo_json({"revision": revision, "routes": [_route_dict(r) for r in routes]})
        return
    _table(f"routes at revision {revision}", ["task", "version", "checkpoint", "since", "reason"],
           [[r.task, str(r.task_version), r.checkpoint_id, r.updated_at, r.reason] for r in routes])


@routes_app.command("set")
def routes_set(
    task: str = typer.Argument(..., help="Task name."),
    checkpoint: str = typer.Argument(..., help="A registered checkpoint id."),
    version: int | None = typer.Option(None, "--version", help="Task version to serve (default: the latest)."),
    reason: str = typer.Option("manual", "--reason", help="Kept in the route history."),
    registry: str | None = RegistryOption,
    as_json: bool = JsonOption,
) -> None:
    """Route a task (version) to a checkpoint."""
    with _client(registry) as client:
        update = client.set_route(task, checkpoint, task_version=version, reason=reason)
    if as_json:
        _echo_json({**_route_dict(update.route), "changed": update.changed})
        return
    r = update.route
    typer.echo(f"{r.task}\tv{r.task_version}\t-> {r.checkpoint_id}" + ("" if update.changed else "\t(unchanged)"))


@routes_app.command("promote")
def routes_promote(
    checkpoint: str = typer.Argument(..., help="A registered checkpoint id."),
    tasks: list[str] | None = typer.Argument(None, help="Tasks to move (their latest versions)."),
    all_active: bool = typer.Option(False, "--all", help="Every active task."),
    unrouted: bool = typer.Option(False, "--unrouted", help="Only those of the tasks that have no route yet."),
    reason: str = typer.Option("manual promotion", "--reason", help="Kept in the route history."),
    registry: str | None = RegistryOption,
    as_json: bool = JsonOption,
) -> None:
    """Route many tasks to one checkpoint in one transaction (all or none).
    With --unrouted a task that has a route keeps it: what a bootstrap that
    runs on every start uses, so it never moves a route someone set."""
    from mtserve.errors import ValidationError
    from mtserve.records import RouteChange, TaskStatus

    if bool(tasks) == all_active:
        raise ValidationError("tasks", "name the tasks to promote, or give --all (not both)", tasks or None)
    with _client(registry) as client:
        names = tasks or [r.name for r in client.list_tasks(status=TaskStatus.ACTIVE)]
        if unrouted:
            routed = {r.task for r in client.get_routes()[0]}
            names = [n for n in names if n not in routed]
        if names:
            updates, revision = client.set_routes([RouteChange(n, checkpoint) for n in names], reason=reason)
        else:
            updates, revision = [], client.get_routes()[1]
    if as_json:
        _echo_json({"revision": revision, "routes": [{**_route_dict(u.route), "changed": u.changed} for u in updates]})
        return
    for u in updates:
        typer.echo(f"{u.route.task}\tv{u.route.task_version}\t-> {u.route.checkpoint_id}" + ("" if u.changed else "\t(unchanged)"))
    typer.echo(f"{sum(u.changed for u in updates)} of {len(updates)} routes changed; registry revision {revision}", err=True)


@routes_app.command("rollback")
def routes_rollback(task: str = typer.Argument(..., help="Task name."), registry: str | None = RegistryOption, as_json: bool = JsonOption) -> None:
    """Move a task back to the route it had before its current one."""
    with _client(registry) as client:
        route = client.rollback(task)
    if as_json:
        _echo_json(_route_dict(route))
        return
    typer.echo(f"{route.task}\tv{route.task_version}\t-> {route.checkpoint_id}\t({route.reason})")


@routes_app.command("history")
def routes_history(task: str = typer.Argument(..., help="Task name."), registry: str | None = RegistryOption, as_json: bool = JsonOption) -> None:
    """Every route a task has had, newest first."""
    with _client(registry) as client:
        entries = client.route_history(task)
    if as_json:
        _echo_json([{**_route_dict(e.route), "current": e.current, "rolled_back_at": e.rolled_back_at, "by": e.actor} for e in entries])
        return
    _table(f"route history of {task}", ["", "version", "checkpoint", "set at", "by", "reason", "rolled back at"],
           [["*" if e.current else "", str(e.route.task_version), e.route.checkpoint_id, e.route.updated_at, e.actor or "-", e.route.reason,
             e.rolled_back_at] for e in entries])


@app.command("audit")
def audit_cmd(
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000, help="How many writes, newest first."),
    registry: str | None = RegistryOption,
    as_json: bool = JsonOption,
) -> None:
    """The registry's newest writes: who (token name), when, what and why (operator role)."""
    with _client(registry) as client:
        entries = client.audit_log(limit)
    if as_json:
        _echo_json([{"revision": e.revision, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target, "reason": e.reason}
                    for e in entries])
        return
    _table("registry audit log", ["revision", "at", "by", "action", "target", "reason"],
           [[str(e.revision), e.at, e.actor or "-", e.action, e.target, e.reason] for e in entries])


# -- checkpoints -------------------------------------------------------------------------------
def _checkpoint_dict(c: Any, manifest: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"id": c.id, "kind": c.kind, "path": c.path, "manifest_sha256": c.manifest_sha256, "registered_at": c.registered_at}
    if manifest:
        out["manifest"] = json.loads(c.manifest_json)
    return out


@checkpoints_app.command("register")
def checkpoints_register(
    path: Path = typer.Argument(..., help="Checkpoint folder (with manifest.json), readable by the registry at the same path."),
    timeout: float | None = typer.Option(None, "--timeout", help="Deadline in seconds (the registry hashes every file)."),
    reason: str = WriteReasonOption,
    registry: str | None = RegistryOption,
    as_json: bool = JsonOption,
) -> None:
    """Register a checkpoint after the registry verifies its manifest and file hashes."""
    # Sent absolute: a relative path would be read from the registry's working directory.
    folder = path.expanduser().resolve()
    with _client(registry) as client:
        record, changed = client.register_checkpoint(
            str(folder), timeout=timeout or max(settings().registry.client_timeout_seconds, 600.0), reason=reason
        )
    if as_json:
        _echo_json({**_checkpoint_dict(record), "changed": changed})
        return
    typer.echo(f"{record.id}\t{record.kind}\t{record.path}" + ("" if changed else "\t(already registered)"))


@checkpoints_app.command("list")
def checkpoints_list(registry: str | None = RegistryOption, as_json: bool = JsonOption) -> None:
    """Every registered checkpoint."""
    with _client(registry) as client:
        records = client.list_checkpoints()
    if as_json:
        _echo_json([_checkpoint_dict(c) for c in records])
        return
    rows = []
    for c in records:
        m = json.loads(c.manifest_json)
        rows.append([c.id, c.kind, str(len(m.get("tasks", []))), c.registered_at, c.path])
    _table(None, ["checkpoint", "kind", "tasks trained", "registered", "path"], rows)


@checkpoints_app.command("show")
def checkpoints_show(checkpoint_id: str = typer.Argument(..., metavar="ID", help="Checkpoint id."), registry: str | None = RegistryOption) -> None:
    """One checkpoint with its manifest (JSON)."""
    with _client(registry) as client:
        record = client.get_checkpoint(checkpoint_id)
    _echo_json(_checkpoint_dict(record, manifest=True))
