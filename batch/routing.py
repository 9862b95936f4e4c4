"""Which tasks a conversation is scored on: every classification task that
reads conversations and lists the conversation's channel, restricted to the
job's `--tasks` when given; a generation task (CS) only when named there."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mtserve.errors import ValidationError
from mtserve.tasks import Channel, InputKind, Task


def check_selection(names: Sequence[str] | None, known: Iterable[Task], where: str = "--tasks") -> tuple[str, ...] | None:
    """Validate a `--tasks` selection against the tasks the scorer knows:
    unknown names and tasks that never read a conversation are refused here,
    at submit, rather than silently scoring nothing all night."""
    if names is None:
        return None
    by_name = {t.name: t for t in known}
    out: list[str] = []
    for name in names:
        task = by_name.get(name)
        if task is None:
            raise ValidationError(where, f"unknown task; known tasks are {sorted(by_name)}", name)
        if task.input_kind is not InputKind.CONVERSATION:
            raise ValidationError(where, f"task {name!r} reads {task.input_kind.value} input, not conversations", name)
        if name not in out:
            out.append(name)
    if not out:
        raise ValidationError(where, "names no task", list(names))
    return tuple(out)


def applicable(tasks: Iterable[Task], channel: Channel, selected: frozenset[str] | None) -> list[Task]:
    """The tasks to score on a conversation of `channel`, in the given order."""
    chosen = []
    for task in tasks:
        if not task.applies_to(InputKind.CONVERSATION, channel):
            continue
        if selected is None:
            if task.is_generation:
                continue  # generation is costly and not a label: only when asked for by name
        elif task.name not in selected:
            continue
        chosen.append(task)
    return chosen
