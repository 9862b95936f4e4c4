"""`mtserve models ...` and `mtserve classify`: the core, run locally."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from mtserve.errors import MtserveError, NotFoundError, ValidationError
from mtserve.files import read_text
from mtserve.inputs import Input, check_task_accepts, input_from_dict
from mtserve.tasks import Catalogue, Task, builtin_catalogue_path, load_catalogue
from mtserve_cli.root import app, fail, settings

models_app = typer.Typer(help="Prepare, import and list model checkpoints (local files).", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("prepare-default")
def prepare_default_cmd() -> None:
    """Convert the embedded SmolLM2-135M-Instruct GGUF to a safetensors checkpoint (once); print its path."""
    from mtserve.models import prepare_default

    s = settings()
    started = time.monotonic()
    path = prepare_default(s.checkpoints_root)
    typer.echo(str(path))
    typer.echo(f"ready in {time.monotonic() - started:.1f}s", err=True)


@models_app.command("import")
def import_cmd(
    source: Path = typer.Argument(..., help="A local Hugging Face causal-LM folder."),
    checkpoint_id: str = typer.Option(..., "--id", help="Checkpoint id to give it."),
) -> None:
    """Copy a local Hugging Face model folder into the checkpoint format (with a manifest)."""
    from mtserve.models import import_model_folder

    typer.echo(str(import_model_folder(source, settings().checkpoints_root, checkpoint_id)))


@models_app.command("import-tgi")
def import_tgi_cmd(
    checkpoint_id: str = typer.Option(..., "--id", help="Checkpoint id to give it."),
    endpoint: str = typer.Option(..., "--endpoint", help="URL of the TGI server (http:// or https://)."),
    model_id: str = typer.Option(..., "--model-id", help="The model_id the server's /info must report."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Local folder with the served model's tokenizer files (a checkpoint or a Hugging Face folder)."),
    mode: str = typer.Option("grammar", "--mode", help="grammar (one step, prefix cache; single-token labels) or prefill (any labels; needs --enable-prefill-logprobs)."),
    model_sha: str | None = typer.Option(None, "--model-sha", help="The model_sha /info must report (default: not checked)."),
) -> None:
    """Make a checkpoint whose model runs on a TGI server: its tokenizer files and a manifest of kind tgi, no weights."""
    from mtserve.tgi import make_tgi_checkpoint

    path = make_tgi_checkpoint(
        settings().checkpoints_root, checkpoint_id, endpoint=endpoint, model_id=model_id, mode=mode, tokenizer_folder=tokenizer, model_sha=model_sha
    )
    typer.echo(str(path))


@models_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the checkpoints under the checkpoint root."""
    from mtserve.checkpoints import list_checkpoints

    manifests = list_checkpoints(settings().checkpoints_root)
    if as_json:
        typer.echo(json.dumps([asdict(m) for m in manifests], indent=2, ensure_ascii=False))
        return
    for m in manifests:
        typer.echo(f"{m.id}\t{m.kind}\t{len(m.tasks)} tasks\t{m.created_at}")


# -- classify ---------------------------------------------------------------------
def read_input(
    text: str | None, text_b: str | None, input_file: Path | None, channel: str | None
) -> Input:
    """One input from the flags: --text [--text-b] or --input FILE ('-' = stdin, JSON)."""
    if input_file is not None and text is not None:
        raise ValidationError("--input", "give either --text or --input, not both", str(input_file))
    if input_file is not None:
        try:
            raw = sys.stdin.read() if str(input_file) == "-" else read_text(input_file, "--input")
        except (OSError, UnicodeDecodeError) as exc:  # stdin
            raise ValidationError("--input", f"cannot read standard input ({exc})", "-") from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValidationError("--input", f"is not valid JSON ({exc.msg} at line {exc.lineno})", str(input_file)) from None
        if channel is not None and isinstance(data, dict):
            data["channel"] = channel
        return input_from_dict(data, "input")
    if text is None:
        raise ValidationError("--text", "give --text (and --text-b for a pair) or --input FILE", None, show_value=False)
    fields: dict[str, Any] = {"text": text}
    if text_b is not None:
        fields["text_b"] = text_b
    if channel is not None:
        fields["channel"] = channel
    return input_from_dict(fields, "input")


def pick_tasks(catalogue: Catalogue, names: Sequence[str], inp: Input) -> list[Task]:
    """Named tasks, or every classification task that applies to the input."""
    if names:
        return [catalogue.task(n) for n in names]
    chosen = [t for t in catalogue.tasks if not t.is_generation and t.applies_to(inp.kind, getattr(inp, "channel", None))]
    if not chosen:
        raise NotFoundError(f"no task in catalogue {catalogue.name!r} applies to {inp.kind.value} input; name one with --task")
    return chosen


def print_predictions(predictions: Sequence[Any], as_json: bool, *, checkpoint: str = "", elapsed: float | None = None) -> None:
    from mtserve.predictions import Prediction

    rows = [p for p in predictions if isinstance(p, Prediction)]
    if as_json:
        out = []
        for p in rows:
            item = asdict(p)
            item["scores"] = {s.label: s.probability for s in p.scores}
            item["checkpoint"] = checkpoint
            out.append(item)
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"checkpoint {checkpoint}" if checkpoint else None)
    table.add_column("task")
    table.add_column("answer")
    table.add_column("distribution / probabilities")
    for p in rows:
        if p.text is not None:
            table.add_row(p.task, p.text, "")
            continue
        answer = ", ".join(p.labels) if len(p.labels) != 1 else p.labels[0]
        if p.expected_value is not None:
            answer += f" (E={p.expected_value:.2f})"
        dist = "  ".join(f"{s.label}={s.probability:.3f}" for s in sorted(p.scores, key=lambda s: -s.probability))
        table.add_row(p.task, answer or "(none over threshold)", dist)
    console = Console()
    console.print(table)
    if elapsed is not None:
        console.print(f"[dim]{len(rows)} tasks in {elapsed:.2f}s[/dim]")


@app.command()
def classify(
    task: list[str] = typer.Option([], "--task", "-t", help="Task name (repeatable). Default: every classification task that applies."),
    text: str | None = typer.Option(None, "--text", help="Input text."),
    text_b: str | None = typer.Option(None, "--text-b", help="Second text of a text_pair input."),
    input_file: Path | None = typer.Option(None, "--input", "-i", help="JSON input: a text, a text pair or a conversation ('-' = stdin)."),
    channel: str | None = typer.Option(None, "--channel", help="call | im | email | review."),
    catalogue: Path | None = typer.Option(None, "--catalogue", help="Task catalogue YAML (default: the built-in hotel catalogue)."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint folder or id (default: the prepared default model)."),
    server: str | None = typer.Option(None, "--server", help="Ask an inference service at a gRPC target instead of running locally: HOST:PORT, or replicas as dns:///NAME:PORT or ipv4:H:P,H:P."),
    no_truncate: bool = typer.Option(False, "--no-truncate", help="Refuse inputs over their token budget instead of cutting them."),
    timeout: float = typer.Option(60.0, "--timeout", help="Deadline of a --server call, in seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Classify one input on one or more tasks and print each label with its distribution."""
    inp = read_input(text, text_b, input_file, channel)
    started = time.monotonic()
    if server:
        from mtserve_cli.remote import classify_remote

        predictions, checkpoint = classify_remote(server, task, inp, truncate=not no_truncate, timeout=timeout)
        print_predictions(predictions, as_json, checkpoint=checkpoint, elapsed=time.monotonic() - started)
        return
    from mtserve.engine import Engine, Request
    from mtserve.models import load_model_folder, resolve_model_path

    s = settings()
    cat = load_catalogue(catalogue or builtin_catalogue_path("hotel"))
    tasks = pick_tasks(cat, task, inp)
    for t in tasks:  # refuse a mismatched input before spending seconds on loading the model
        check_task_accepts(t, inp)
    path = resolve_model_path(model, s.checkpoints_root)
    try:
        loaded = load_model_folder(path, device=s.device, dtype=s.dtype, root=s.checkpoints_root)
    except OSError as exc:
        fail(f"cannot load model from {path}: {exc}")
    engine = Engine(loaded.model, loaded.tokenizer, cat.truncation, max_batch_tokens=s.inference.max_batch_tokens, style=loaded.manifest.prompt_style)
    started = time.monotonic()
    results = engine.predict([Request(t, inp, truncate=not no_truncate) for t in tasks])
    errors = [r for r in results if isinstance(r, MtserveError)]
    if errors:
        raise errors[0]
    print_predictions(results, as_json, checkpoint=loaded.id, elapsed=time.monotonic() - started)
