"""`mtserve logs ...`: make a SYNTHETIC day of logs, check a day's folder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer

from mtserve_cli.root import app

logs_app = typer.Typer(help="Conversation logs: generate a SYNTHETIC day, check a day's folder.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")


@logs_app.command("synth")
def synth_cmd(
    date: str = typer.Option(..., "--date", help="The day, YYYY-MM-DD."),
    n: int = typer.Option(..., "--n", min=0, help="Conversations (plus n/4 e-mails and n/4 reviews)."),
    out: Path = typer.Option(..., "--out", help="Output folder (logs/ inside it is the day folder for `batch submit`)."),
    seed: int = typer.Option(0, "--seed", help="Same date, n and seed give byte-identical files."),
    mix_chinese: bool = typer.Option(False, "--mix-chinese", help="Code-switch about a third of the items with Chinese phrases."),
    bad_records: int = typer.Option(0, "--bad-records", min=0, help="Inject this many invalid log records (each rejected once)."),
    formats: list[str] = typer.Option(["jsonl"], "--format", help="jsonl | jsonl.gz | parquet (repeatable: the day is split across them)."),
    as_json: bool = typer.Option(False, "--json", help="Print the paths as JSON."),
) -> None:
    """Write a SYNTHETIC day of hotel customer-service logs with ground-truth labels (for demos and tests only)."""
    from batch.synth import generate_day, write_day

    day = generate_day(date, n, seed, mix_chinese=mix_chinese, bad_records=bad_records)
    paths = write_day(day, out, formats=formats)
    info = {
        "synthetic": True,
        "logs": str(paths.logs),
        "labels": str(paths.labels),
        "emails": str(paths.emails),
        "reviews": str(paths.reviews),
        "conversations": len(day.conversations),
        "bad_records": paths.bad_records,
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(str(paths.logs))
    typer.echo(
        f"SYNTHETIC: {len(day.conversations)} conversations ({paths.bad_records} bad records injected), "
        f"ground truth in {paths.labels}; for demos and tests only",
        err=True,
    )


@logs_app.command("check")
def check_cmd(
    folder: Path = typer.Argument(..., help="A day's log folder."),
    rejects: Path | None = typer.Option(None, "--rejects", help="Also write the rejects (JSONL, with reasons) here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Read a day's folder as the batch would: count valid records and rejects by reason."""
    from batch.logs import LogRecord, Reject, iter_records, list_day, write_rejects

    day = list_day(folder)
    valid = 0
    bad: list[Reject] = []
    channels: Counter[str] = Counter()
    for r in iter_records(folder):
        if isinstance(r, LogRecord):
            valid += 1
            channels[r.conversation.channel.value] += 1
        else:
            bad.append(r)
    if rejects is not None:
        write_rejects(bad, rejects)
    by_reason = dict(sorted(Counter(r.code.value for r in bad).items()))
    if as_json:
        typer.echo(json.dumps({"files": list(day.files), "ignored": list(day.ignored), "valid": valid,
                               "channels": dict(channels), "rejects": len(bad), "by_reason": by_reason}, indent=2))
        return
    typer.echo(f"{len(day.files)} file(s), {valid} valid conversation(s) {dict(channels)}, {len(bad)} reject(s)")
    for code, count in by_reason.items():
        typer.echo(f"  {code}: {count}")
    if day.ignored:
        typer.echo(f"ignored (not log files): {', '.join(day.ignored)}")


@logs_app.command("datasets")
def datasets_cmd(
    date: str = typer.Option(..., "--date", help="The first day, YYYY-MM-DD."),
    days: int = typer.Option(1, "--days", min=1, help="Consecutive days to generate."),
    n: int = typer.Option(..., "--n", min=1, help="Conversations per day (plus n/4 e-mails and n/4 reviews)."),
    out: Path = typer.Option(..., "--out", help="Writes <out>/<task>/{train,dev,test}.jsonl (the trainer's data format)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the days and the split."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Write SYNTHETIC training data for every hotel task (for demos and tests only)."""
    import datetime as dt

    from batch.synth import generate_day, to_task_datasets

    first = dt.date.fromisoformat(date)
    generated = [generate_day(first + dt.timedelta(days=k), n, seed) for k in range(days)]
    counts = to_task_datasets(generated, out, seed=seed)
    if as_json:
        typer.echo(json.dumps(counts, indent=2))
        return
    for task, splits in counts.items():
        typer.echo(f"{task}\t" + "\t".join(f"{split}={k}" for split, k in splits.items()))
    typer.echo(f"SYNTHETIC training data in {out}; for demos and tests only", err=True)
