"""`mtserve train ...`: training jobs.

    run -f job.yaml [--promote]       locally, with a progress bar, then the per-task table (zero-shot,
                                      baseline, multi-task, ratio, qualified), the checkpoint paths and,
                                      with --promote/--register, what moved in the registry
    validate -f job.yaml              the spec with every default filled in
    submit -f job.yaml [--promote]    the same job on the trainer service (`mtserve serve trainer`)
    status [JOB] | watch JOB | cancel JOB | resume JOB
    worker                            a Celery worker of the `train` queue: runs the service's jobs here

The service's client (and grpc with it) is imported inside the commands that
need it; `run` imports the registry client only when asked to register."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from mtserve.errors import MtserveError, ValidationError
from mtserve.files import read_text
from mtserve_cli.root import app, settings

train_app = typer.Typer(help="Train multi-task models with the paper's pipeline (locally, or on the trainer service).", no_args_is_help=True)
app.add_typer(train_app, name="train")


class _Display:
    """Turns progress events into a rich progress bar (on a terminal) or into
    short log lines (otherwise); both on stderr, so --json output stays clean."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.progress: Any = None
        self.bars: dict[tuple[str, str], Any] = {}
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.progress.start()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False)

    def __call__(self, e: Mapping[str, Any]) -> None:
        kind, run = e.get("event"), e.get("run", "")
        if kind == "stage_started":
            if self.progress is not None:
                self.bars[(run, e["stage"])] = self.progress.add_task(f"{run} {e['stage']}", total=e["steps"], loss="-", speed="-")
            else:
                self.line(f"{run}: {e['stage']} started, {e['steps']} steps")
        elif kind == "step":
            bar = self.bars.get((run, e["stage"]))
            if bar is None and self.progress is not None:
                bar = self.bars[(run, e["stage"])] = self.progress.add_task(f"{run} {e['stage']}", total=e["steps"], loss="-", speed="-")
            if bar is not None:
                self.progress.update(bar, completed=e["step"], loss=f"{e['loss']:.4f}", speed=f"{e['tokens_per_s']:.0f}")
            elif e["step"] % 50 == 0 or e["step"] == e["steps"]:
                self.line(f"{run}: {e['stage']} step {e['step']}/{e['steps']} loss {e['loss']:.4f} {e['tokens_per_s']:.0f} tok/s")
        elif kind == "eval":
            summary = e.get("summary") or {}
            values = ", ".join(f"{t} {v:.3f}" for t, v in (summary.get("values") or {}).items())
            self.line(f"{run}: dev at {e['stage']} step {e['step']}: {values}{' (best so far)' if e.get('best') else ''}")
        elif kind == "run_cached":
            self.line(f"{run}: finished earlier, reused")
        elif kind == "resumed":
            self.line(f"{run}: resuming at {e.get('stage')} step {e.get('step')}")
        elif kind == "run_finished":
            self.line(f"{run}: done -> {e.get('checkpoint')}")
        elif kind == "bad_lines":
            self.line(f"[yellow]{e['count']} bad line(s) skipped (on_bad_lines: report); first: {e['first'][0]}[/yellow]")
        elif kind == "dropped":
            self.line(f"[yellow]{e['task']}: training examples dropped: {e['reasons']}[/yellow]")
        elif kind == "resources":
            self.line(f"high-resource tasks ({e['source']}): {e['high'] or 'none'}")
        elif kind == "registry_checked":
            self.line(f"registry {e['registry']} answers (revision {e['revision']})")
            for warning in e.get("warnings") or []:
                self.line(f"[yellow]{warning}[/yellow]")
        elif kind == "promotion":
            for text in _report_lines(e):
                self.line(text)
        elif kind == "promotion_failed":
            self.line(f"[red]registry {e.get('registry')}: {e.get('error')}[/red]")
        elif kind == "job_queued":
            self.line(f"job {e.get('id')}: queued{' to resume' if e.get('action') == 'resume' else ''}")
        elif kind == "attempt_started":
            self.line(f"job {e.get('id')}: {e.get('action')} (attempt {e.get('attempt')})")
        elif kind == "job_state":
            self.line(f"job {e.get('id')}: {e.get('state')}{': ' + e['error'] if e.get('error') else ''}")
        elif kind == "job_failed":
            self.line(f"[red]{e.get('error')}[/red]")


def _pct(est: Mapping[str, Any] | None) -> str:
    if not est:
        return "-"
    return f"{est['value'] * 100:.1f} ({est['low'] * 100:.1f}-{est['high'] * 100:.1f})"


def _report_lines(report: Mapping[str, Any]) -> list[str]:
    """A promotion report (trainer.promote.PromotionReport.to_dict()) as lines."""
    out = [f"registered {c['id']} ({'new' if c['changed'] else 'already registered'})" for c in report.get("registered", [])]
    if not report.get("promote"):
        out.append("routes unchanged (registration only; --promote moves the qualified tasks)")
        return out
    for t in report.get("tasks", []):
        before = (t.get("route_before") or {}).get("checkpoint_id") or "no route"
        if t["action"] == "moved":
            out.append(f"{t['task']}: moved {before} -> {t['checkpoint_id']} (task version {t['task_version']}): {t['reason']}")
        elif t["action"] == "already routed":
            out.append(f"{t['task']}: already on {t['checkpoint_id']} (task version {t['task_version']})")
        else:
            out.append(f"{t['task']}: stayed on {before}: {t['reason']}")
    return out


def print_promotion(report: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    for c in report.get("registered", []):
        console.print(f"registered: {c['id']} ({'new' if c['changed'] else 'already registered'})", soft_wrap=True, highlight=False)
    if not report.get("promote"):
        console.print("routes unchanged (registration only; --promote moves the qualified tasks)")
        return
    table = Table(title=f"promotion in the registry at {report.get('registry')}" + (f" (revision {report['revision']})" if report.get("revision") else ""))
    for col in ("task", "route", "from", "to", "why"):
        table.add_column(col)
    for t in report.get("tasks", []):
        before = (t.get("route_before") or {}).get("checkpoint_id") or "-"
        after = (t.get("route_after") or {}).get("checkpoint_id") or "-"
        version = f" v{t['task_version']}" if t.get("task_version") and t["action"] != "stayed" else ""
        table.add_row(t["task"], t["action"], before, after + version, t["reason"])
    console.print(table)
    moved, stayed = report.get("moved") or [], report.get("stayed") or []
    console.print(f"moved: {', '.join(moved) or 'none'}   stayed: {', '.join(stayed) or 'none'}", highlight=False)


def print_result(result: Any) -> None:
    from types import SimpleNamespace

    from rich.console import Console
    from rich.table import Table

    if isinstance(result, Mapping):  # a result as JSON (the trainer service's)
        result = SimpleNamespace(**{"bad_lines": [], **result})
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file or a pipe: do not squeeze the table into 80 columns
    table = Table(title=f"job {result.job}: {result.method} (dev, 95% intervals)")
    for col in ("task", "metric", "zero-shot", "trivial", "baseline", "multi-task", "ratio (95% CI)", "verdict", "--promote"):
        table.add_column(col)
    for r in result.rows:
        table.add_row(*result_row_cells(r, result.method))
    console.print(table)
    if result.method != "single_task":
        over = "-" if result.overhead is None else f"{result.overhead * 100:.1f}%"
        console.print(f"qualified: {result.num_qualified}/{len(result.rows)}   overhead: {over}   models: {len(result.checkpoints)}")
    for path in result.checkpoints:
        console.print(f"checkpoint: {path}", soft_wrap=True, highlight=False)
    for r in result.rows:
        for warning in r.get("dev_warnings") or []:
            console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)
        if r.get("degenerate_baseline"):
            console.print(f"[yellow]warning: {r['task']}: the single-task baseline does not beat its trivial baseline "
                          f"({(r.get('trivial') or {}).get('rule', '?')}); a gate against it says little[/yellow]", highlight=False)
    if result.bad_lines:
        console.print(f"[yellow]{len(result.bad_lines)} bad data line(s) were skipped[/yellow]")
    if getattr(result, "promotion", None):
        print_promotion(result.promotion)


def result_row_cells(r: Mapping[str, Any], method: str) -> list[str]:
    """One row of the job table: per task zero-shot, trivial, single-task
    baseline, multi-task metric, ratio with its interval, verdict, and whether
    `--promote` routes it."""
    if r["ratio"] is None:
        ratio = "-"
    elif r["ratio_low"] is None:
        ratio = f"{r['ratio']:.3f}"
    else:
        high = "inf" if r["ratio_high"] is None else f"{r['ratio_high']:.3f}"
        ratio = f"{r['ratio']:.3f} ({r['ratio_low']:.3f}-{high})"
    base = _pct(r["baseline"])
    if r["baseline_selected"] and r["baseline_selected"].startswith("zero-shot"):
        base += " = zero-shot"
    if r.get("degenerate_baseline"):
        base += " (degenerate)"
    if r["verdict"]:
        verdict = r["verdict"]
    elif method == "single_task" and r["baseline"] is not None:
        verdict = "degenerate baseline" if r.get("degenerate_baseline") else "single-task model"
    else:
        verdict = "-"
    return [r["task"], r["metric"] or "-", _pct(r["zero_shot"]), _pct(r.get("trivial")), base, _pct(r["multi_task"]), ratio,
            verdict, "routes" if r.get("routes_on_promote") else "stays"]


@train_app.command("sweep")
def sweep_cmd(
    file: Path = typer.Option(..., "--file", "-f", help="A job spec (YAML): its tasks, data, model and settings; method and mixture are ignored."),
    lr: list[float] = typer.Option(None, "--lr", help="Learning rates for full fine-tuning (repeat; default 3e-5 1e-4 3e-4)."),
    lora_lr: list[float] = typer.Option(None, "--lora-lr", help="Learning rates for LoRA (repeat; default 3e-4 1e-3 3e-3)."),
    finetune: list[str] = typer.Option(None, "--finetune", help="full and/or lora (repeat; default both)."),
    precision: list[str] = typer.Option(None, "--precision", help="auto, fp32 or bf16 (repeat to compare; default the job's)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for sweep.json, sweep.md and the curve plots (default <runs_dir>/sweep-<job>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the sweep result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Learning-rate sweep: the job's single-task baselines at each rate, full
    fine-tuning and LoRA, chosen on dev (highest mean metric). Every point is a
    cached run: an interrupted sweep resumes, a wider grid trains only the new points."""
    from trainer.job import load_job
    from trainer.sweep import DEFAULT_GRID, run_sweep

    spec = load_job(file)
    modes = finetune or ["full", "lora"]
    for i, mode in enumerate(modes):
        if mode not in DEFAULT_GRID:
            raise ValidationError(f"--finetune[{i}]", "must be full or lora", mode)
    for i, p in enumerate(precision or []):
        if p not in ("auto", "fp32", "bf16"):
            raise ValidationError(f"--precision[{i}]", "must be auto, fp32 or bf16", p)
    for name, values in (("--lr", lr or []), ("--lora-lr", lora_lr or [])):
        for i, v in enumerate(values):
            if not v > 0:
                raise ValidationError(f"{name}[{i}]", "must be a positive number", v)
    given = {"full": lr, "lora": lora_lr}
    grid = {m: tuple(given[m] or DEFAULT_GRID[m]) for m in modes}
    out_dir = out or spec.runs_path / f"sweep-{spec.name}"
    display = _Display(quiet=quiet or as_json)
    try:
        result = run_sweep(spec, grid, precisions=precision or None, settings=settings(), emit=display, out_dir=out_dir)
    finally:
        display.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    (out_dir / "sweep.md").write_text(result.to_markdown() + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    typer.echo(result.to_markdown())
    for group, value in sorted(result.chosen.items()):
        typer.echo(f"chosen: {group}: lr {value:g}")
    typer.echo(f"written: {out_dir / 'sweep.md'}, {out_dir / 'sweep.json'}" + (f", {len(result.files)} plot(s)" if result.files else ""))


@train_app.command("run")
def run_cmd(
    file: Path = typer.Option(..., "--file", "-f", help="The job spec (YAML)."),
    resume: bool = typer.Option(False, "--resume", help="Continue interrupted runs from their last saved state."),
    restart: bool = typer.Option(False, "--restart", help="Discard the state of interrupted runs and train them again."),
    promote: bool = typer.Option(False, "--promote", help="At the end, register the checkpoints and route each qualified task to its new one (also `promote: true` in the spec)."),
    register: bool = typer.Option(False, "--register", help="At the end, register the checkpoints with the registry (routes unchanged)."),
    registry: str | None = typer.Option(None, "--registry", help="Registry HOST:PORT (default: settings registry.address)."),
    as_json: bool = typer.Option(False, "--json", help="Print the job result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Run a training job: baselines, the method's multi-task runs, qualification, checkpoints.
    Finished runs are reused; progress events go to <runs_dir>/<run>/events.jsonl.
    With --promote the registry must answer before training starts."""
    from trainer.job import load_job
    from trainer.pipeline import run_job

    if resume and restart:
        # a domain error, not fail(): main() turns it into one line and exit code 2
        raise ValidationError("--restart", "give --resume or --restart, not both", None, show_value=False)
    spec = load_job(file)
    promote = promote or spec.promote
    display = _Display(quiet=quiet or as_json)
    error: Exception | None = None
    out: dict[str, Any] = {}
    try:
        client = address = None
        if promote or register:
            from trainer.promote import connect_registry

            address = registry or settings().registry.address
            client, event = connect_registry(spec, address, promote=promote)
            display(event)
        result = run_job(spec, settings=settings(), emit=display, resume=resume, restart=restart)
        out = result.to_dict()
        if client is not None:
            from trainer.promote import finish_job

            assert address is not None  # set together with client
            try:
                report = finish_job(result, client, promote=promote, address=address, result_file=spec.runs_path / f"job-{spec.name}.result.json")
                out["promotion"] = report.to_dict()
            except MtserveError as exc:  # the result is printed anyway: the checkpoints exist
                error = exc
                out["promotion"] = {"error": str(exc)}
            finally:
                client.close()
    finally:
        display.close()
    if as_json:
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print_result({k: v for k, v in out.items() if k != "promotion" or "error" not in v})
    if error is not None:
        raise error


@train_app.command("validate")
def validate_cmd(
    file: Path = typer.Option(..., "--file", "-f", help="The job spec (YAML)."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved spec as JSON."),
) -> None:
    """Check a job spec and print it with every default filled in."""
    from trainer.job import load_job

    spec = load_job(file)
    typer.echo(json.dumps(spec.to_dict(), indent=2) if as_json else spec.to_yaml().rstrip())


# -- the trainer service -------------------------------------------------------------------------

ServerOption = typer.Option(None, "--server", help="Trainer service HOST:PORT (default: settings trainer.address).")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


def _trainer(address: str | None) -> Any:
    from services.trainer.client import TrainerClient

    s = settings()
    return TrainerClient(address or s.trainer.address, timeout=s.trainer.client_timeout_seconds, cancel_grace=s.trainer.cancel_grace_seconds,
                         settings=s)


def _job_line(job: Any) -> list[str]:
    p = job.progress
    where = f"{p.stage} {p.step}/{p.steps} loss {p.loss:.4f}" if p.stage and p.steps else (p.last_event or "-")
    if job.state.value == "succeeded" and job.result:
        where = f"{job.result.get('num_qualified', 0)}/{len(job.result.get('rows', []))} qualified"
    return [job.id, job.state.value, where, job.created_at[:19].replace("T", " "), (job.error or "").split("\n")[0][:80]]


def _print_job(job: Any) -> None:
    typer.echo(f"job {job.id} ({job.name}): {job.state.value}")
    if job.error:
        typer.echo(f"  {job.error}")
    p = job.progress
    if p.run:
        typer.echo(f"  progress: {p.run} {p.stage} step {p.step}/{p.steps}, loss {p.loss:.4f}, {p.tokens_per_s:.0f} tok/s; runs done {p.runs_done}")
    if p.dev:
        typer.echo("  latest dev: " + ", ".join(f"{t} {v:.3f}" for t, v in p.dev.items()))
    opts = job.options
    if opts.promote or opts.register:
        typer.echo(f"  {'promote' if opts.promote else 'register'} with the registry at {opts.registry_address}")
    for i, a in enumerate(job.attempts, 1):
        end = f"ended {a.ended_at[:19]} ({a.outcome}, exit {a.exit_code})" if a.ended_at else "running"
        where = f" on {a.worker}" if a.worker else ""
        typer.echo(f"  attempt {i}: {a.action}{where}, pid {a.pid}, started {a.started_at[:19]}, {end}")
    typer.echo(f"  folder: {job.folder}")
    if job.result:
        print_result(job.result)


@train_app.command("submit")
def submit_cmd(
    file: Path = typer.Option(..., "--file", "-f", help="The job spec (YAML); relative paths start from its folder, which the service must see."),
    promote: bool = typer.Option(False, "--promote", help="When the job ends, register its checkpoints and route each qualified task to its new one."),
    register: bool = typer.Option(False, "--register", help="When the job ends, register its checkpoints (routes unchanged)."),
    registry: str | None = typer.Option(None, "--registry", help="Registry HOST:PORT for the job (default: the service's trainer.registry_address)."),
    resume: bool = typer.Option(False, "--resume", help="Continue runs an earlier process left interrupted."),
    restart: bool = typer.Option(False, "--restart", help="Discard the state of interrupted runs."),
    watch: bool = typer.Option(False, "--watch", help="Then follow the job's progress until it ends."),
    server: str | None = ServerOption,
    as_json: bool = JsonOption,
) -> None:
    """Queue a job on the trainer service; prints its id (the spec is checked first: errors name the field)."""
    text = read_text(file, "job")
    with _trainer(server) as client:
        job = client.start_job(text, base_dir=str(file.resolve().parent), promote=promote, register=register,
                               registry_address=registry or "", resume=resume, restart=restart)
        if as_json and not watch:
            typer.echo(json.dumps(job.to_dict(), indent=2, ensure_ascii=False))
            return
        typer.echo(job.id)
        typer.echo(f"job {job.id}: {job.state.value} on {client.address}", err=True)
        if watch:
            _follow(client, job.id, as_json=as_json)


@train_app.command("status")
def status_cmd(
    job_id: str | None = typer.Argument(None, metavar="[JOB]", help="A job id; none: list the jobs."),
    state: list[str] = typer.Option([], "--state", help="Only jobs in this state (repeatable): queued, running, succeeded, failed, cancelled, interrupted."),
    limit: int = typer.Option(0, "--limit", help="At most this many jobs, newest first (0: all)."),
    server: str | None = ServerOption,
    as_json: bool = JsonOption,
) -> None:
    """One job (progress, attempts, error, result table and promotion) or the list of jobs."""
    from services.trainer.records import JobState

    states = []
    for value in state:
        try:
            states.append(JobState(value))
        except ValueError:
            raise ValidationError("--state", f"must be one of {[s.value for s in JobState]}", value) from None
    with _trainer(server) as client:
        if job_id:
            job = client.get_job(job_id)
            if as_json:
                typer.echo(json.dumps(job.to_dict(), indent=2, ensure_ascii=False))
            else:
                _print_job(job)
            return
        jobs = client.list_jobs(states=states, limit=limit)
    if as_json:
        typer.echo(json.dumps([j.to_dict() for j in jobs], indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("job", "state", "progress", "created (UTC)", "error"):
        table.add_column(column, no_wrap=column != "error")
    for job in jobs:
        table.add_row(*_job_line(job))
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


def _follow(client: Any, job_id: str, *, as_json: bool) -> None:
    """Follow WatchJob to the end: a progress bar (terminal) or log lines on
    stderr, or the events as JSON lines on stdout; exit code 0 only when the
    job succeeded."""
    display = _Display(quiet=as_json)
    last = None
    try:
        for kind, value in client.watch_job(job_id):
            if kind == "job":
                last = value
                if as_json:
                    typer.echo(json.dumps({"event": "job", "job": value.to_dict()}, ensure_ascii=False))
            else:
                if as_json:
                    typer.echo(json.dumps(value, ensure_ascii=False, default=str))
                else:
                    display(value)
    finally:
        display.close()
    if last is None or last.state.active:
        from mtserve.errors import UnavailableError

        raise UnavailableError(f"the watch of job {job_id} ended while the job was {last.state.value if last else 'unknown'} (the service stopped?)")
    if not as_json:
        if last.result:
            print_result(last.result)
        typer.echo(f"job {last.id}: {last.state.value}{': ' + last.error if last.error else ''}", err=True)
    if last.state.value != "succeeded":
        raise typer.Exit(1)


@train_app.command("watch")
def watch_cmd(
    job_id: str = typer.Argument(..., metavar="JOB", help="The job id."),
    server: str | None = ServerOption,
    as_json: bool = typer.Option(False, "--json", help="Print the events (and the job on every state change) as JSON lines."),
) -> None:
    """Follow a job's progress (its past events, then live ones) until it
    stops running; exit code 0 if it succeeded, 1 otherwise."""
    with _trainer(server) as client:
        _follow(client, job_id, as_json=as_json)


@train_app.command("cancel")
def cancel_cmd(
    job_id: str = typer.Argument(..., metavar="JOB", help="The job id."),
    server: str | None = ServerOption,
    as_json: bool = JsonOption,
) -> None:
    """Cancel a job: SIGTERM to its processes, SIGKILL after the service's grace period."""
    with _trainer(server) as client:
        job = client.cancel_job(job_id)
    if as_json:
        typer.echo(json.dumps(job.to_dict(), indent=2, ensure_ascii=False))
    else:
        typer.echo(f"job {job.id}: {job.state.value}")


@train_app.command("resume")
def resume_cmd(
    job_id: str = typer.Argument(..., metavar="JOB", help="The job id."),
    watch: bool = typer.Option(False, "--watch", help="Then follow the job until it ends."),
    server: str | None = ServerOption,
    as_json: bool = JsonOption,
) -> None:
    """Queue an interrupted, failed or cancelled job again: it continues from its last saved training state."""
    with _trainer(server) as client:
        job = client.resume_job(job_id)
        if as_json and not watch:
            typer.echo(json.dumps(job.to_dict(), indent=2, ensure_ascii=False))
            return
        typer.echo(f"job {job.id}: {job.state.value}", err=True)
        if watch:
            _follow(client, job.id, as_json=as_json)


# -- the train worker ---------------------------------------------------------------------------


def train_worker_argv(loglevel: str, hostname: str | None, extra: Any = ()) -> list[str]:
    """The celery command line `mtserve train worker` runs: the `train` queue,
    one pool process and no prefetch (one job per worker at a time; a second
    job reserved here would wait hours instead of going to an idle GPU)."""
    import sys

    from services.trainer.celery_app import QUEUE

    argv = [
        sys.executable, "-m", "celery", "-A", "services.trainer.celery_app", "worker",
        "--queues", QUEUE, "--pool", "prefork", "--concurrency", "1", "--prefetch-multiplier", "1",
        # Mingle and gossip (worker-to-worker chatter) buy nothing here and slow every start.
        "--without-mingle", "--without-gossip", "--loglevel", loglevel,
    ]
    if hostname:
        argv += ["--hostname", hostname]
    return argv + list(extra)


@train_app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker_cmd(
    ctx: typer.Context,
    loglevel: str = typer.Option("info", "--loglevel", "-l", help="Celery log level."),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Worker node name (default celery@HOST)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the celery command instead of running it."),
) -> None:
    """Run training jobs from the Celery `train` queue on this machine, one at a
    time (one worker per GPU machine; extra arguments go to celery)."""
    import os

    from mtserve_cli.batch import _check_broker
    from mtserve_cli.root import state

    s = settings()
    argv = train_worker_argv(loglevel, hostname, ctx.args)
    if dry_run:
        typer.echo(" ".join(argv))
        return
    _check_broker(s)
    from services.trainer.store import JobStore

    JobStore(s.trainer_database_url).close()  # migrate (and fail, naming the setting) before taking jobs
    env = dict(os.environ)
    if state.config_file is not None:  # the worker reads the same settings file
        env["MTSERVE_CONFIG"] = str(Path(state.config_file).resolve())
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)  # become the worker: signals reach celery directly
