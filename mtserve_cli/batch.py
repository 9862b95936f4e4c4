"""`mtserve batch ...` and `mtserve worker`: the Celery batch scorer.

Celery, the results store and the scorer are imported inside the commands,
so `mtserve --help` and the other nouns never load them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mtserve.errors import NotFoundError
from mtserve_cli.root import app, fail, settings, state

if TYPE_CHECKING:
    from batch.jobs import JobStatus
    from batch.store import ResultStore
    from mtserve.config import Settings
    from mtserve.tasks import Task

batch_app = typer.Typer(help="Score a day of conversation logs with Celery workers; status, reports.", no_args_is_help=True)
app.add_typer(batch_app, name="batch")


def _store(s: Settings) -> ResultStore:
    from batch.store import ResultStore

    return ResultStore(s.results_database_url)


def _enqueuer(s: Settings) -> Any:
    from batch.celery_app import make_app
    from batch.dispatch import CeleryEnqueuer

    return CeleryEnqueuer(make_app(s))


def _known_tasks(s: Settings) -> dict[str, Task]:
    """The tasks the configured scorer answers, to validate --tasks at submit."""
    if s.batch.scorer == "local":
        from batch.local_scorer import load_batch_catalogue

        return {t.name: t for t in load_batch_catalogue(s).tasks}
    from batch.grpc_scorer import known_tasks

    return known_tasks(s)


def _split(names: Sequence[str]) -> list[str] | None:
    out = [n.strip() for item in names for n in item.split(",") if n.strip()]
    return out or None


def _check_broker(s: Settings) -> None:
    """Fail with a hint rather than hang when Redis is not there."""
    import redis
    from kombu.utils.url import maybe_sanitize_url

    try:
        redis.Redis.from_url(s.batch.broker_url, socket_connect_timeout=3, socket_timeout=3).ping()
    except redis.RedisError as exc:
        fail(  # the URL without its password: this goes to a terminal and CI logs
            f"cannot reach the Celery broker at {maybe_sanitize_url(s.batch.broker_url)} ({exc}). Start Redis "
            "(`redis-server --daemonize yes`) or point batch.broker_url (MTSERVE_BATCH__BROKER_URL) at one."
        )


@batch_app.command("submit")
def submit_cmd(
    logs: Path = typer.Option(..., "--logs", help="The day's log folder (JSONL, JSONL.gz, Parquet), or a root with one folder per date."),
    date: str = typer.Option(..., "--date", help="The day, YYYY-MM-DD."),
    tasks: list[str] = typer.Option([], "--tasks", "-t", help="Only these tasks (repeatable or comma-separated); a generation task only when named."),
    chunk_size: int | None = typer.Option(None, "--chunk-size", min=1, help="Records per chunk (default: batch.chunk_size)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end (reconciling if it stalls), then print the report."),
    timeout: float | None = typer.Option(None, "--timeout", help="With --wait: give up waiting after this many seconds (exit 3)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Plan the day into chunks, write its rejects, record the job and send the chunk tasks; print the job id."""
    from batch.jobs import submit_job
    from batch.routing import check_selection

    s = settings()
    selection = check_selection(_split(tasks), _known_tasks(s).values())
    _check_broker(s)
    store = _store(s)
    job = submit_job(s, store, _enqueuer(s), logs=logs, date=date, tasks=selection, chunk_size=chunk_size)
    if not as_json:
        typer.echo(job.job_id)
        typer.echo(
            f"{job.n_chunks} chunk(s), {job.records} record(s), {job.rejects} rejected (see {job.rejects_file})",
            err=True,
        )
    if wait:
        _wait(s, store, job.job_id, timeout=timeout, quiet=as_json)
        job = store.job(job.job_id)
        if as_json:
            typer.echo(json.dumps({"job_id": job.job_id, "status": job.status, "report": job.report}, indent=2, ensure_ascii=False))
        else:
            from batch.report import render_markdown

            typer.echo(render_markdown(job.report or {}))
        if job.status != "finished":
            raise typer.Exit(1)
    elif as_json:
        typer.echo(json.dumps({"job_id": job.job_id, "chunks": job.n_chunks, "records": job.records, "rejects": job.rejects}))


def _fmt_seconds(x: float | None) -> str:
    if x is None:
        return "-"
    x = round(x)
    return f"{x // 3600}h{x % 3600 // 60:02d}m" if x >= 3600 else f"{x // 60}m{x % 60:02d}s"


def _status_line(st: JobStatus) -> str:
    rate = f"{st.rate:.1f}/s" if st.rate else "-"
    return (
        f"{st.job_id} {st.status}: chunks {st.done}/{st.chunks} done ({st.running} running, {st.failed} failed), "
        f"{st.conversations_scored} conversations scored, {st.results} results, rate {rate}, ETA {_fmt_seconds(st.eta_seconds)}"
    )


def _wait(s: Settings, store: ResultStore, job_id: str, *, timeout: float | None, quiet: bool, poll: float = 1.0) -> None:
    """Poll the store until the job has its report; reconcile when it stalls."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from batch.jobs import job_status, reconcile

    enqueuer = _enqueuer(s)
    deadline = None if timeout is None else time.monotonic() + timeout
    console = Console(stderr=True, quiet=quiet)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=console, transient=False,
    ) as progress:
        bar = progress.add_task(job_id, total=None, info="")
        while True:
            st = job_status(store, job_id, stall_after=s.batch.stall_after)
            rate = f"{st.rate:.1f} conv/s" if st.rate else ""
            info = f"{st.conversations_scored} conversations {rate} ETA {_fmt_seconds(st.eta_seconds)}"
            progress.update(bar, total=st.chunks, completed=st.done + st.failed, info=info)
            if st.finished:
                return
            try:
                # Cheap unless the job stalled: then it re-sends what the store lacks.
                result = reconcile(store, enqueuer, s, job_id)
                if result.action != "nothing":
                    console.print(f"reconcile: {result.reason}")
            except Exception as exc:  # noqa: BLE001 - the broker may be restarting; try again next poll
                console.print(f"reconcile failed ({type(exc).__name__}: {exc}); retrying")
            if deadline is not None and time.monotonic() > deadline:
                console.print(f"gave up waiting after {timeout:.0f}s: {_status_line(st)}")
                raise typer.Exit(3)
            time.sleep(poll)


@batch_app.command("status")
def status_cmd(
    job_id: str = typer.Argument(..., help="The job id printed by submit."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end, reconciling if it stalls."),
    timeout: float | None = typer.Option(None, "--timeout", help="With --wait: give up after this many seconds (exit 3)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Progress of a job, from the results store: chunks done, conversations scored, rate, ETA."""
    from batch.jobs import job_status

    s = settings()
    store = _store(s)
    if wait:
        _wait(s, store, job_id, timeout=timeout, quiet=as_json)
    st = job_status(store, job_id, stall_after=s.batch.stall_after)
    if as_json:
        typer.echo(json.dumps(st.to_dict(), indent=2))
        return
    typer.echo(_status_line(st))
    if st.stalled:
        typer.echo(f"stalled: nothing happened for over {s.batch.stall_after:.0f}s; `mtserve batch reconcile {job_id}` re-sends the missing chunks")
    for f in st.failed_chunks:
        typer.echo(f"  chunk {f['chunk']} failed: {f['error']}")


@batch_app.command("reconcile")
def reconcile_cmd(
    job_id: str = typer.Argument(..., help="The job id."),
    force: bool = typer.Option(False, "--force", help="Re-send every missing chunk now, even if the job seems to progress."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also run failed chunks again."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Compare the results store with the job's plan and re-enqueue the chunks that are missing."""
    from dataclasses import asdict

    from batch.jobs import reconcile

    s = settings()
    _check_broker(s)
    result = reconcile(_store(s), _enqueuer(s), s, job_id, force=force, retry_failed=retry_failed)
    typer.echo(json.dumps(asdict(result)) if as_json else f"{result.action}: {result.reason}")


@batch_app.command("report")
def report_cmd(
    job_id: str | None = typer.Argument(None, help="The job id (or give --date)."),
    date: str | None = typer.Option(None, "--date", help="The latest finished job of this day."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report."),
) -> None:
    """Print a finished job's daily report (Markdown, or JSON)."""
    from batch.jobs import check_date
    from batch.report import render_markdown

    s = settings()
    store = _store(s)
    if (job_id is None) == (date is None):
        fail("give a job id or --date, not both")
    if job_id is not None:
        job = store.job(job_id)
    else:
        found = store.latest_job(check_date(date or ""), finished=True)
        if found is None:
            raise NotFoundError(f"no finished batch job for {date}")
        job = found
    if job.report is None:
        fail(f"job {job.job_id} has no report yet (status {job.status}); follow it with `mtserve batch status {job.job_id} --wait`")
    typer.echo(json.dumps(job.report, indent=2, ensure_ascii=False) if as_json else render_markdown(job.report or {}))


@batch_app.command("jobs")
def jobs_cmd(
    date: str | None = typer.Option(None, "--date", help="Only this day."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List recent jobs."""
    s = settings()
    jobs = _store(s).jobs(date)
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in j.__dict__.items() if k != "report"} for j in jobs], indent=2))
        return
    for j in jobs:
        typer.echo(f"{j.job_id}\t{j.date}\t{j.status}\t{j.n_chunks} chunks\t{j.records} records\t{j.rejects} rejects")


@batch_app.command("export")
def export_cmd(
    date: str = typer.Option(..., "--date", help="The day to export."),
    out: Path | None = typer.Option(None, "--out", help="Folder (default: <output_dir>/<date>/results)."),
) -> None:
    """Write the day's results as Parquet, one partition per task (task=<name>/)."""
    from batch.export import export_day
    from batch.jobs import check_date

    s = settings()
    date = check_date(date)
    path = export_day(_store(s), date, None, out or s.batch_output_dir / date / "results")
    typer.echo(str(path))


# -- the worker ----------------------------------------------------------------------
def worker_argv(
    s: Settings,
    *,
    concurrency: int | None,
    pool: str,
    loglevel: str,
    hostname: str | None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The celery command line `mtserve worker` runs."""
    n = concurrency or s.batch.worker_concurrency or (1 if s.batch.scorer == "local" else 4)
    argv = [
        sys.executable, "-m", "celery", "-A", "batch.celery_app", "worker",
        "--queues", s.batch.queue,
        "--pool", pool,
        "--concurrency", str(n),
        "--prefetch-multiplier", "1",
        # Mingle (sync revoked ids with other workers at start) and gossip
        # (worker-to-worker events) buy nothing here and slow every start.
        "--without-mingle", "--without-gossip",
        "--loglevel", loglevel,
    ]
    if hostname:
        argv += ["--hostname", hostname]
    return argv + list(extra)


@app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker_cmd(
    ctx: typer.Context,
    concurrency: int | None = typer.Option(None, "--concurrency", "-c", min=1, help="Pool processes (default: batch.worker_concurrency, else 1 local / 4 grpc)."),
    pool: str = typer.Option("prefork", "--pool", help="prefork (default: a process per slot, scorer loaded after the fork) | solo | threads."),
    loglevel: str = typer.Option("info", "--loglevel", "-l", help="Celery log level."),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Worker node name (default celery@HOST)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the celery command instead of running it."),
) -> None:
    """Start a Celery worker for batch jobs with this project's settings (extra arguments go to celery)."""
    s = settings()
    argv = worker_argv(s, concurrency=concurrency, pool=pool, loglevel=loglevel, hostname=hostname, extra=ctx.args)
    if dry_run:
        typer.echo(" ".join(argv))
        return
    _check_broker(s)
    env = dict(os.environ)
    # The pool processes divide the cores between them (mtserve/threads.py): they must know how many they are.
    env["MTSERVE_BATCH__WORKER_CONCURRENCY"] = argv[argv.index("--concurrency") + 1]
    if s.batch.metrics_address:
        # A fresh folder for the pool processes' metrics (batch/metrics.py),
        # in the environment before Celery starts, so every process inherits it.
        import tempfile

        from batch.metrics import MULTIPROC_ENV

        env[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="mtserve-worker-metrics-")
    if state.config_file is not None:  # the worker reads the same settings file
        env["MTSERVE_CONFIG"] = str(Path(state.config_file).resolve())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)  # become the worker: signals reach celery directly
