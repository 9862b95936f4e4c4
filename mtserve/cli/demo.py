"""`mtserve demo`: the README's main command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from mtserve.cli import app, settings

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@app.command()
def demo() -> None:
    """Classify the bundled sample conversations, e-mail and review on every
    hotel task that applies, with the embedded default model (zero-shot)."""
    from rich.console import Console

    from mtserve.cli.core import pick_tasks, print_predictions
    from mtserve.engine import Engine, Request
    from mtserve.inputs import input_from_dict
    from mtserve.models import load_checkpoint, prepare_default
    from mtserve.tasks import builtin_catalogue_path, load_catalogue

    console = Console()
    s = settings()
    with console.status("preparing the default model"):
        path = prepare_default(s.checkpoints_root)
        loaded = load_checkpoint(path, device=s.device, dtype=s.dtype, root=s.checkpoints_root)
    catalogue = load_catalogue(builtin_catalogue_path("hotel"))
    engine = Engine(loaded.model, loaded.tokenizer, catalogue.truncation, max_batch_tokens=s.inference.max_batch_tokens)
    console.print(f"[bold]model[/bold] {loaded.id} ({path})  [bold]catalogue[/bold] {catalogue.name}: {len(catalogue.tasks)} tasks")
    for sample in sorted(SAMPLES.glob("*.json")):
        inp = input_from_dict(json.loads(sample.read_text(encoding="utf-8")), sample.name)
        tasks = pick_tasks(catalogue, [], inp)
        console.rule(f"{sample.name}: {inp.kind.value}" + (f" ({inp.channel.value})" if getattr(inp, "channel", None) else ""))
        started = time.monotonic()
        results = engine.predict([Request(t, inp) for t in tasks])
        print_predictions(results, False, checkpoint=loaded.id, elapsed=time.monotonic() - started)
    typer.echo("(zero-shot answers of a 135M model: the trainer is what makes them good)")
