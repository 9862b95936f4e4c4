"""The work of a batch job, as plain functions over the results store, a
scorer and an `Enqueuer` (the Celery side, batch/dispatch.py; tests pass
fakes). Celery tasks (batch/tasks.py) only call these.

Completeness lives in the results store, not in the broker: a chunk is done
exactly when the transaction that commits its last results marks it done.
`finish_job` (the chord's callback) and `reconcile` (status --wait, the
reconcile command) compare the store with the plan and re-enqueue the chunks
that are missing, so a job survives a lost message, a dead worker, a Redis
restart, or a chord that counted a redelivered chunk twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batch.logs import Chunk, LogRecord, plan_day, read_chunk, write_rejects
from batch.scoring import Scorer, TaskError
from batch.store import ChunkState, Job, ResultRow, ResultStore
from mtserve.errors import ValidationError
from mtserve.predictions import Answer
from mtserve.tasks import Task

if TYPE_CHECKING:
    from mtserve.config import Settings

log = logging.getLogger(__name__)


class Enqueuer(Protocol):
    def enqueue(self, job_id: str, chunks: Sequence[ChunkState]) -> None:
        """Send one task per chunk plus a callback that runs finish_job once they have all returned."""
        ...

    def finalize(self, job_id: str) -> None:
        """Send finish_job alone (every chunk is settled but no report was written)."""
        ...

    def queue_depth(self) -> int | None:
        """Messages waiting in the job queue (None: unknown)."""
        ...


# -- submit ------------------------------------------------------------------------
def check_date(date: str) -> str:
    try:
        return dt.date.fromisoformat(date).isoformat()
    except (TypeError, ValueError):
        raise ValidationError("--date", "must be a date written YYYY-MM-DD", date) from None


def resolve_day_dir(logs: str | Path, date: str) -> Path:
    """`--logs DIR`: the day's folder itself, or a root holding one folder per
    date (DIR/2024-05-01/)."""
    root = Path(logs).expanduser()
    if (root / date).is_dir():
        return (root / date).resolve()
    if not root.is_dir():
        raise ValidationError("--logs", "is not a directory", str(root))
    return root.resolve()


def find_ground_truth(day_dir: Path) -> Path | None:
    """A labels.jsonl written by batch/synth.py beside the logs (in the day
    folder or its parent), used only when it says it is synthetic."""
    for candidate in (day_dir / "labels.jsonl", day_dir.parent / "labels.jsonl"):
        if candidate.is_file():
            with candidate.open(encoding="utf-8") as f:
                first = f.readline()
            try:
                if json.loads(first).get("synthetic") is True:
                    return candidate.resolve()
            except (ValueError, AttributeError):
                pass
            log.warning("%s is not a synthetic ground-truth file from batch/synth.py; accuracy is not reported", candidate)
    return None


def new_job_id(date: str) -> str:
    return f"{date}-{secrets.token_hex(4)}"


def submit_job(
    settings: Settings,
    store: ResultStore,
    enqueuer: Enqueuer,
    *,
    logs: str | Path,
    date: str,
    tasks: Sequence[str] | None,
    chunk_size: int | None = None,
) -> Job:
    """Plan the day, write its rejects, record the job and its chunks, send the chord.
    `tasks` must already be validated against the scorer's tasks (batch.routing.check_selection)."""
    date = check_date(date)
    day_dir = resolve_day_dir(logs, date)
    size = chunk_size or settings.batch.chunk_size
    plan = plan_day(day_dir, size)
    job_id = new_job_id(date)
    out_dir = settings.batch_output_dir / date
    rejects_file = out_dir / f"rejects-{job_id}.jsonl"
    write_rejects(plan.reject_records, rejects_file)
    job = Job(
        job_id=job_id,
        date=date,
        logs_dir=str(day_dir),
        status="running",
        scorer=settings.batch.scorer,
        tasks=None if tasks is None else tuple(tasks),
        chunk_size=size,
        n_chunks=len(plan.chunks),
        records=plan.records,
        rejects=plan.rejects,
        rejects_by_reason=dict(sorted(Counter(r.code.value for r in plan.reject_records).items())),
        rejects_file=str(rejects_file),
        ground_truth=None if (gt := find_ground_truth(day_dir)) is None else str(gt),
        rounds=0,
        submitted_at=time.time(),
    )
    store.create_job(job, [c.to_dict() for c in plan.chunks])
    states = store.chunks(job_id)
    if states:
        send(store, enqueuer, job_id, states)
    else:
        enqueuer.finalize(job_id)  # an empty day still gets its (empty) report
    return store.job(job_id)


def send(store: ResultStore, enqueuer: Enqueuer, job_id: str, chunks: Sequence[ChunkState]) -> None:
    # Recorded before sending: if the send fails half-way, the chunks look
    # enqueued-but-stalled and the next reconcile sends them again.
    store.mark_enqueued(job_id, [c.index for c in chunks], new_round=True)
    enqueuer.enqueue(job_id, chunks)


# -- one chunk ---------------------------------------------------------------------
@dataclass
class ChunkOutcome:
    job_id: str
    index: int
    status: str  # done | skipped (already done) | failed
    conversations: int = 0
    expected: int = 0
    inserted: int = 0
    errors: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result_row(job: Job, chunk: int, record: LogRecord, a: Answer, now: float) -> ResultRow:
    p = a.prediction
    task, task_version, checkpoint = a.key
    return ResultRow(
        conversation_id=record.conversation_id,
        task=task,
        task_version=task_version,
        checkpoint=checkpoint,
        date=job.date,
        channel=record.conversation.channel.value,
        job_id=job.job_id,
        chunk_index=chunk,
        label=p.label,
        labels=list(p.labels),
        scores={s.label: float(s.probability) for s in p.scores},
        expected_value=p.expected_value,
        text=p.text,
        prompt_tokens=p.prompt_tokens,
        truncated=p.truncated,
        queue_ms=a.timing.queue_ms,
        compute_ms=a.timing.compute_ms,
        scored_at=now,
    )


def run_chunk(
    store: ResultStore,
    scorer: Scorer,
    job_id: str,
    chunk_dict: Mapping[str, Any],
    *,
    worker: str = "",
    group_size: int = 8,
    pause: float = 0.0,
) -> ChunkOutcome:
    """Score every valid conversation of the chunk on every task that applies
    to its channel, and store the answers. Idempotent: a done chunk returns at
    once, and (conversation, task) pairs already stored for the answering
    task version and checkpoint are not scored again, so a run cut short
    (worker killed, time limit) resumes after its last committed group.
    Raises PreconditionError when the log files changed since planning."""
    chunk = Chunk.from_dict(chunk_dict)
    before = store.start_chunk(job_id, chunk.index, worker)
    if before.status == "done":
        return ChunkOutcome(job_id, chunk.index, "skipped", before.conversations or 0, before.expected or 0)
    started = time.monotonic()
    job = store.job(job_id)
    selected = None if job.tasks is None else frozenset(job.tasks)
    records = [r for r in read_chunk(chunk) if isinstance(r, LogRecord)]
    plans = {ch: scorer.plan(ch, selected) for ch in {r.conversation.channel for r in records}}
    existing = store.existing_keys([r.conversation_id for r in records])
    keys: set[tuple[str, int, str]] = set()
    expected = 0
    todo = []
    for r in records:
        refs = plans[r.conversation.channel]
        expected += len(refs)
        missing = [ref for ref in refs if (r.conversation_id, *ref.key) not in existing]
        keys.update(ref.key for ref in refs if (r.conversation_id, *ref.key) in existing)
        if missing:
            todo.append((r, missing))
    errors: list[dict[str, Any]] = []
    groups = [todo[i : i + group_size] for i in range(0, len(todo), group_size)] or [[]]
    inserted = 0
    for g, group in enumerate(groups):
        answers = scorer.score([(r.conversation, refs) for r, refs in group]) if group else []
        now = time.time()
        rows: list[ResultRow] = []
        for (record, _refs), per_task in zip(group, answers):
            for a in per_task:
                if isinstance(a, TaskError):
                    errors.append({"conversation_id": record.conversation_id, "task": a.task, "error": str(a.error)})
                else:
                    rows.append(_result_row(job, chunk.index, record, a, now))
                    keys.add(a.key)
        if g < len(groups) - 1:
            inserted += store.upsert_results(rows)
            if pause:
                time.sleep(pause)  # tests: a window in which the chunk is half-stored
        else:
            inserted += store.finish_chunk(
                job_id,
                chunk.index,
                rows=rows,
                conversations=len(records),
                expected=expected,
                keys=keys,
                errors=errors,
                seconds=time.monotonic() - started,
            )
    return ChunkOutcome(job_id, chunk.index, "done", len(records), expected, inserted, len(errors), time.monotonic() - started)


# -- status and reconcile -------------------------------------------------------------
@dataclass
class JobStatus:
    job_id: str
    date: str
    status: str
    chunks: int
    done: int
    failed: int
    running: int
    pending: int
    records: int
    rejects: int
    conversations_scored: int  # valid conversations in done chunks
    results: int  # result rows this job wrote
    started_at: float | None  # first chunk run started
    last_activity: float
    elapsed: float
    rate: float | None  # conversations per second so far
    eta_seconds: float | None
    stalled: bool
    rounds: int
    finished: bool
    failed_chunks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_status(store: ResultStore, job_id: str, *, stall_after: float, now: float | None = None) -> JobStatus:
    job = store.job(job_id)
    chunks = store.chunks(job_id)
    now = time.time() if now is None else now
    by = Counter(c.status for c in chunks)
    done = [c for c in chunks if c.status == "done"]
    scored = sum(c.conversations or 0 for c in done)
    starts = [c.started_at for c in chunks if c.started_at]
    started_at = min(starts) if starts else None
    stamps = [job.submitted_at] + [x for c in chunks for x in (c.enqueued_at, c.started_at, c.finished_at) if x]
    last = max(stamps)
    elapsed = now - job.submitted_at
    rate = eta = None
    settled = all(c.settled for c in chunks)
    ends = [c.finished_at for c in chunks if c.finished_at]
    until = max(ends) if settled and ends else now  # a finished job's rate is over its own run
    if started_at and scored:
        rate = scored / max(until - started_at, 1e-6)
        left = sum(c.records for c in chunks if not c.settled)  # records, rejects included: close enough
        eta = left / rate if rate > 0 else None
    finished = job.report is not None
    return JobStatus(
        job_id=job_id,
        date=job.date,
        status=job.status,
        chunks=len(chunks),
        done=by["done"],
        failed=by["failed"],
        running=by["running"],
        pending=by["pending"],
        records=job.records,
        rejects=job.rejects,
        conversations_scored=scored,
        results=store.count_results(job_id=job_id),
        started_at=started_at,
        last_activity=last,
        elapsed=elapsed,
        rate=rate,
        eta_seconds=eta,
        stalled=not finished and (now - last) > stall_after,
        rounds=job.rounds,
        finished=finished,
        failed_chunks=[{"chunk": c.index, "error": c.error} for c in chunks if c.status == "failed"],
    )


@dataclass
class ReconcileResult:
    job_id: str
    action: str  # nothing | requeued | finalize | waiting
    chunks: list[int]
    reason: str


def reconcile(
    store: ResultStore,
    enqueuer: Enqueuer,
    settings: Settings,
    job_id: str,
    *,
    force: bool = False,
    retry_failed: bool = False,
    now: float | None = None,
) -> ReconcileResult:
    """Compare the store with the plan and re-enqueue what is missing.

    Without `force`, only a stalled job (nothing started or finished for
    settings.batch.stall_after seconds) whose queue is empty is touched: a
    missing chunk is then neither queued, nor running, nor coming back by
    itself (a dead worker's message returns within the visibility timeout).
    Re-sending a chunk that is in fact still alive costs a little time, never
    a duplicate row."""
    job = store.job(job_id)
    if retry_failed:
        failed = [c.index for c in store.chunks(job_id) if c.status == "failed"]
        if failed:
            store.reopen_chunks(job_id, failed)
    chunks = store.chunks(job_id)
    missing = [c for c in chunks if not c.settled]
    if not missing:
        if job.report is None:
            enqueuer.finalize(job_id)
            return ReconcileResult(job_id, "finalize", [], "every chunk is settled but no report was written: report task sent")
        if job.status != "finished" and all(c.status == "done" for c in chunks):
            # Reported incomplete, but the stragglers have finished since.
            enqueuer.finalize(job_id)
            return ReconcileResult(job_id, "finalize", [], "every chunk is done now: report task sent again")
        return ReconcileResult(job_id, "nothing", [], f"job is {job.status}")
    if not force:
        status = job_status(store, job_id, stall_after=settings.batch.stall_after, now=now)
        if not status.stalled:
            return ReconcileResult(job_id, "nothing", [], f"{len(missing)} chunk(s) to go, progressing")
        depth = enqueuer.queue_depth()
        if depth:
            return ReconcileResult(
                job_id, "waiting", [], f"{depth} message(s) wait in queue {settings.batch.queue!r}: is a worker consuming it?"
            )
    send(store, enqueuer, job_id, missing)
    return ReconcileResult(job_id, "requeued", [c.index for c in missing], f"re-enqueued {len(missing)} missing chunk(s)")


# -- the end of a job -----------------------------------------------------------------
def finish_job(
    store: ResultStore,
    enqueuer: Enqueuer,
    settings: Settings,
    job_id: str,
    tasks: Mapping[str, Task],
) -> str:
    """The chord callback: every chunk task of a round has returned (or the
    chord counted so). Chunks the store does not have as settled are sent
    again in a new round; once all are settled, write the report and the
    Parquet export. Returns what it did: requeued | finished | incomplete | already."""
    from batch.export import export_day
    from batch.report import build_report, write_report_files

    job = store.job(job_id)
    chunks = store.chunks(job_id)
    missing = [c for c in chunks if not c.settled]
    if missing and job.rounds < settings.batch.max_rounds:
        log.warning("job %s: %d chunk(s) not in the store after round %d; re-enqueueing", job_id, len(missing), job.rounds)
        send(store, enqueuer, job_id, missing)
        return "requeued"
    if job.report is not None and not missing and job.status == "finished":
        return "already"
    status = "finished" if not missing and not any(c.status == "failed" for c in chunks) else "incomplete"
    finished_at = time.time()
    report = build_report(store, job, chunks, tasks, status=status, finished_at=finished_at)
    out_dir = settings.batch_output_dir / job.date
    report["export"] = str(export_day(store, job.date, _keys(chunks), out_dir / "results"))
    report["files"] = write_report_files(report, out_dir, job_id)
    store.save_report(job_id, status, report, finished_at)
    return status


def _keys(chunks: Iterable[ChunkState]) -> set[tuple[str, int, str]]:
    return {k for c in chunks for k in c.keys}
