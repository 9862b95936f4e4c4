"""The run cache: one folder per run, keyed by a hash of everything that
determines its outcome (resolved settings, task definitions, data file hashes,
the base checkpoint's manifest hash, the trainer's format version).

    <runs_dir>/<run id>/
        key.json        what the key was computed from (readable, for audits)
        events.jsonl    progress events, one JSON object per line, appended as they happen
        LATEST, state-*/  the resumable training state (trainer.checkpoint)
        best/           the best evaluated weights so far (single-task baselines)
        evals/          every evaluation's full records
        result.json     written last, atomically: the run is finished

A finished run is reused as it is; an interrupted one (a state folder and no
result) resumes when asked to; a run is locked while a process works on it, so
two processes (a CLI and the trainer service, say) never train it together.
Output paths, the device and logging settings are not part of the key: moving
a runs folder or logging more often must not invalidate finished runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mtserve.errors import PreconditionError
from trainer.checkpoint import clear_train_state, read_json, read_state_meta, write_json

RUN_FORMAT = 1  # bump when a change to the trainer changes what a run produces
RESULT = "result.json"
EVENTS = "events.jsonl"


def run_key(payload: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of what determines a run."""
    body = {"format": RUN_FORMAT, **payload}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


class EventLog:
    """Appends events to a JSONL file (flushed per line, so a watcher can tail
    it) and passes them on to a callback."""

    def __init__(self, path: Path | None, forward: Any = None, **fields: Any):
        self.path = path
        self.forward = forward
        self.fields = fields
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def child(self, path: Path | None, **fields: Any) -> EventLog:
        """A log for a sub-run: writes its own file and forwards to this one."""
        return EventLog(path, self, **fields)

    def __call__(self, event: Mapping[str, Any]) -> None:
        record = {**self.fields, **event}
        record.setdefault("time", round(time.time(), 3))
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fp:
                fp.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        if self.forward is not None:
            self.forward(record)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of a log; a torn last line (a killed writer) is skipped."""
    out = []
    try:
        with open(path, encoding="utf-8") as fp:
            for line in fp:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return out


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def dir(self, run_id: str) -> Path:
        return self.root / run_id

    def status(self, run_id: str) -> str:
        """finished | interrupted (a resumable state exists) | new"""
        folder = self.dir(run_id)
        if (folder / RESULT).exists():
            return "finished"
        if read_state_meta(folder) is not None:
            return "interrupted"
        return "new"

    def result(self, run_id: str) -> dict[str, Any] | None:
        path = self.dir(run_id) / RESULT
        return read_json(path) if path.exists() else None

    def write_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        write_json(self.dir(run_id) / RESULT, dict(result))

    def describe_state(self, run_id: str) -> str:
        meta = read_state_meta(self.dir(run_id)) or {}
        return f"stage {meta.get('stage', '?')} step {meta.get('last_stage_step', meta.get('step', '?'))}"

    def prepare(self, run_id: str, key_payload: Mapping[str, Any], *, resume: bool, restart: bool) -> str:
        """Decide what to do with a run: 'cached', 'resume' or 'start'.
        An interrupted run needs resume (continue) or restart (discard its state)."""
        status = self.status(run_id)
        folder = self.dir(run_id)
        if status == "finished":
            return "cached"
        if status == "interrupted":
            if restart:
                clear_train_state(folder)
                shutil.rmtree(folder / "best", ignore_errors=True)
                shutil.rmtree(folder / "evals", ignore_errors=True)
                return "start"
            if not resume:
                raise PreconditionError(
                    f"run {run_id} was interrupted at {self.describe_state(run_id)} ({folder}); "
                    "pass --resume to continue it or --restart to discard its state"
                )
            return "resume"
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "key.json", dict(key_payload))
        return "start"

    @contextlib.contextmanager
    def lock(self, run_id: str) -> Iterator[None]:
        """An exclusive lock on the run for this process (released on exit or crash)."""
        folder = self.dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise PreconditionError(f"run {run_id} is being trained by another process (pid {holder}); {folder}") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def finished(self) -> list[dict[str, Any]]:
        """Every finished run's result (to assemble tables from)."""
        out = []
        for path in sorted(self.root.glob(f"*/{RESULT}")) if self.root.exists() else []:
            try:
                out.append(read_json(path))
            except (OSError, ValueError):
                continue
        return out


def run_results(results: Sequence[Mapping[str, Any]], *, model: str | None = None, split: str = "dev") -> list[Any]:
    """Finished run results (RunStore.finished()) as trainer.report.RunResult
    rows: a single-task run gives a `single_task` row and a `zero_shot` row (its
    step-0 evaluation; dev only), a multi-task run a row of its method. `model`
    defaults to each run's base checkpoint id, so tables split by base model.
    `split="test"`: the test evaluations of the same (dev-selected) checkpoints,
    for runs that scored test (`eval.test`)."""
    from trainer.report import RunResult
    from trainer.results import MultiTaskRun, SingleTaskRun

    out = []
    for data in results:  # stage 0 runs have no evaluation
        if data.get("kind") == SingleTaskRun.kind:
            st = SingleTaskRun.from_dict(data)
            base = model if model is not None else st.base.id
            scored = {"dev": st.dev, "test": st.test}.get(split)
            if scored is None:
                continue
            out.append(RunResult("single_task", st.task, {st.task: scored}, checkpoint=st.checkpoint.id,
                                 model=base, extra={"run": st.run_id, "selected": st.selected.to_dict()}))
            if split == "dev":
                out.append(RunResult("zero_shot", st.task, {st.task: st.zero_shot}, checkpoint=base or None,
                                     model=base, extra={"run": st.run_id}))
        elif data.get("kind") == MultiTaskRun.kind:
            mt = MultiTaskRun.from_dict(data)
            evals = {"dev": mt.dev, "test": mt.test}.get(split)
            if not evals:
                continue
            out.append(RunResult(mt.method, mt.group, dict(evals), checkpoint=mt.checkpoint.id,
                                 model=model if model is not None else mt.base.id, extra={"run": mt.run_id, "job": mt.job}))
    return out


__all__ = ["EVENTS", "RESULT", "RUN_FORMAT", "EventLog", "RunStore", "read_events", "run_key", "run_results"]
