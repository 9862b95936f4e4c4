"""`mtserve train run -f job.yaml`: a training job, locally, with a progress
bar, then the per-task table (zero-shot, baseline, multi-task, ratio,
qualified) and the checkpoint paths. The trainer service's `submit|status|
watch|cancel` verbs come with the service."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping

import typer

from mtserve.cli import app, settings
from mtserve.errors import ValidationError

train_app = typer.Typer(help="Train multi-task models with the paper's pipeline (local jobs).", no_args_is_help=True)
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


def _pct(est: Mapping[str, Any] | None) -> str:
    if not est:
        return "-"
    return f"{est['value'] * 100:.1f} ({est['low'] * 100:.1f}-{est['high'] * 100:.1f})"


def print_result(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file or a pipe: do not squeeze the table into 80 columns
    table = Table(title=f"job {result.job}: {result.method} (dev, 95% intervals)")
    for col in ("task", "metric", "zero-shot", "baseline", "multi-task", "ratio", "qualified"):
        table.add_column(col)
    for r in result.rows:
        ratio = "-" if r["ratio"] is None else (f"{r['ratio']:.3f}" if r["ratio_low"] is None else f"{r['ratio']:.3f} ({r['ratio_low']:.3f}-{r['ratio_high'] if r['ratio_high'] is None else format(r['ratio_high'], '.3f')})")
        qualified = "-" if r["qualified"] is None else ("yes" if r["qualified"] else "no")
        if r["verdict"] == "within noise":
            qualified += " (within noise)"
        base = _pct(r["baseline"])
        if r["baseline_selected"] and r["baseline_selected"].startswith("zero-shot"):
            base += " = zero-shot"
        table.add_row(r["task"], r["metric"] or "-", _pct(r["zero_shot"]), base, _pct(r["multi_task"]), ratio, qualified)
    console.print(table)
    if result.method != "single_task":
        over = "-" if result.overhead is None else f"{result.overhead * 100:.1f}%"
        console.print(f"qualified: {result.num_qualified}/{len(result.rows)}   overhead: {over}   models: {len(result.checkpoints)}")
    for path in result.checkpoints:
        console.print(f"checkpoint: {path}", soft_wrap=True, highlight=False)
    if result.bad_lines:
        console.print(f"[yellow]{len(result.bad_lines)} bad data line(s) were skipped[/yellow]")


@train_app.command("run")
def run_cmd(
    file: Path = typer.Option(..., "--file", "-f", help="The job spec (YAML)."),
    resume: bool = typer.Option(False, "--resume", help="Continue interrupted runs from their last saved state."),
    restart: bool = typer.Option(False, "--restart", help="Discard the state of interrupted runs and train them again."),
    as_json: bool = typer.Option(False, "--json", help="Print the job result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Run a training job: baselines, the method's multi-task runs, qualification, checkpoints.
    Finished runs are reused; progress events go to <runs_dir>/<run>/events.jsonl."""
    from trainer.job import load_job
    from trainer.pipeline import run_job

    if resume and restart:
        # a domain error, not fail(): main() turns it into one line and exit code 2
        raise ValidationError("--restart", "give --resume or --restart, not both", None, show_value=False)
    spec = load_job(file)
    display = _Display(quiet=quiet or as_json)
    try:
        result = run_job(spec, settings=settings(), emit=display, resume=resume, restart=restart)
    finally:
        display.close()
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_result(result)


@train_app.command("validate")
def validate_cmd(
    file: Path = typer.Option(..., "--file", "-f", help="The job spec (YAML)."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved spec as JSON."),
) -> None:
    """Check a job spec and print it with every default filled in."""
    from trainer.job import load_job

    spec = load_job(file)
    typer.echo(json.dumps(spec.to_dict(), indent=2) if as_json else spec.to_yaml().rstrip())


def _main() -> None:  # pragma: no cover - `python -m mtserve.cli.train` convenience
    from mtserve.cli import main

    main(["train", *sys.argv[1:]])
