"""`mtserve classify --server ADDR`: the same classification, answered by an
inference service. Imported only when --server is given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer

from mtserve.errors import NotFoundError
from mtserve.inputs import Input


def classify_remote(server: str, task_names: Sequence[str], inp: Input, *, truncate: bool = True, timeout: float = 60.0) -> tuple[list[Any], str]:
    """Predictions for the named tasks (generation ones included), or for
    every classification task the service serves that applies to the input;
    and the checkpoint(s) that answered. One ClassifyMany call: the input's
    prefix is computed once per checkpoint."""
    from mtserve_api.inference import InferenceClient
    from mtserve_cli.root import settings

    with InferenceClient(server, timeout=timeout, settings=settings()) as client:
        answers, skipped = client.classify_many(inp, list(task_names), truncate=truncate)
    for name, reason in skipped:
        typer.echo(f"note: {name} skipped: {reason}", err=True)
    if not answers:
        channel = getattr(inp, "channel", None)
        where = inp.kind.value + (f"/{channel.value}" if channel else "")
        raise NotFoundError(f"no task served at {server} applies to {where} input; name one with --task")
    checkpoints = sorted({a.checkpoint_id for a in answers})
    return [a.prediction for a in answers], ", ".join(checkpoints)
