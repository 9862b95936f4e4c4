"""The plain functions behind the Celery tasks (batch/jobs.py), without
Celery: a chunk scored with the local scorer on a tiny model, idempotence and
resumption, task selection, failures, the completeness check (finish_job,
reconcile) with a recording enqueuer, the report and the Parquet export."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from sqlalchemy import delete, update

from batch import jobs, schema
from batch.local_scorer import LocalScorer
from batch.logs import LogRecord, read_chunk
from batch.report import build_report, render_markdown
from batch.routing import applicable, check_selection
from batch.scoring import Item, TaskError
from batch.store import ChunkState, Job, ResultRow, ResultStore
from batch.synth import generate_day, write_day
from mtserve.config import Settings, load_settings
from mtserve.engine import Engine, Request
from mtserve.errors import PreconditionError, ValidationError
from mtserve.predictions import Answer
from mtserve.tasks import Channel, InputKind, builtin_catalogue_path, load_catalogue

DATE = "2024-05-01"


class Recorder:
    """An Enqueuer that records instead of sending."""

    def __init__(self, depth: int | None = 0):
        self.sent: list[list[int]] = []
        self.finalized: list[str] = []
        self.depth = depth

    def enqueue(self, job_id: str, chunks: Sequence[Any]) -> None:
        self.sent.append([c.index for c in chunks])

    def finalize(self, job_id: str) -> None:
        self.finalized.append(job_id)

    def queue_depth(self) -> int | None:
        return self.depth


class Counting:
    """A scorer proxy that counts the (conversation, task) pairs it is asked for."""

    def __init__(self, inner: Any, fail_task: str | None = None):
        self.inner, self.kind, self.asked, self.fail_task = inner, inner.kind, 0, fail_task

    def tasks(self) -> Any:
        return self.inner.tasks()

    def plan(self, channel: Channel, selected: frozenset[str] | None) -> Any:
        return self.inner.plan(channel, selected)

    def score(self, items: Sequence[Item]) -> list[list[Answer | TaskError]]:
        self.asked += sum(len(refs) for _, refs in items)
        out = self.inner.score(items)
        if self.fail_task:
            out = [[TaskError(a.prediction.task, ValidationError("x", "refused on purpose")) if a.prediction.task == self.fail_task else a for a in per] for per in out]
        return out

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def scorer(tiny_llama_dir: Path) -> LocalScorer:
    s = load_settings(overrides={"batch.scorer": "local", "batch.checkpoint": str(tiny_llama_dir), "device": "cpu", "dtype": "float32"}, env={})
    return LocalScorer.from_settings(s)


@pytest.fixture
def settings(tmp_path: Path, tiny_llama_dir: Path) -> Settings:
    return load_settings(
        overrides={
            "batch.scorer": "local", "batch.checkpoint": str(tiny_llama_dir), "device": "cpu",
            "batch.results_database_url": f"sqlite:///{tmp_path / 'r.db'}", "batch.output_dir": str(tmp_path / "out"),
            "batch.chunk_size": 4, "batch.visibility_timeout": 30, "batch.chunk_time_limit": 20, "batch.retry_backoff_max": 5,
            "batch.stall_seconds": 60,
        },
        env={"MTSERVE_HOME": str(tmp_path)},
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[ResultStore]:
    s = ResultStore(settings.results_database_url)
    yield s
    s.close()


@pytest.fixture
def day(tmp_path: Path) -> Any:
    d = generate_day(DATE, 8, 2, bad_records=3)
    return d, write_day(d, tmp_path / "day").logs


def submit(settings: Settings, store: ResultStore, logs: Path, tasks: Sequence[str] | None = None) -> tuple[Any, Recorder]:
    rec = Recorder()
    job = jobs.submit_job(settings, store, rec, logs=logs, date=DATE, tasks=tasks)
    return job, rec


def run_all(store: ResultStore, scorer: Any, job_id: str) -> list[jobs.ChunkOutcome]:
    return [jobs.run_chunk(store, scorer, job_id, c.chunk, group_size=4) for c in store.chunks(job_id)]


# -- submit and one chunk ------------------------------------------------------------------------
def test_submit_plans_records_and_sends(settings: Settings, store: ResultStore, day: Any) -> None:
    _d, logs = day
    job, rec = submit(settings, store, logs)
    assert job.records == 11 and job.rejects == 3 and job.n_chunks == 3
    assert sum(job.rejects_by_reason.values()) == 3
    assert Path(job.rejects_file).read_text().count("\n") == 3
    assert job.ground_truth == str((logs.parent / "labels.jsonl").resolve())
    assert rec.sent == [[0, 1, 2]] and job.rounds == 1
    assert [c.enqueued for c in store.chunks(job.job_id)] == [1, 1, 1]
    with pytest.raises(ValidationError, match="--date"):
        jobs.submit_job(settings, store, rec, logs=logs, date="May 1", tasks=None)


def test_a_day_folder_under_a_root(tmp_path: Path) -> None:
    (tmp_path / DATE).mkdir()
    assert jobs.resolve_day_dir(tmp_path, DATE) == (tmp_path / DATE).resolve()
    assert jobs.resolve_day_dir(tmp_path, "2024-05-02") == tmp_path.resolve()
    with pytest.raises(ValidationError, match="not a directory"):
        jobs.resolve_day_dir(tmp_path / "nope", DATE)


def test_chunk_answers_are_the_engines(settings: Settings, store: ResultStore, scorer: LocalScorer, day: Any) -> None:
    """The same core: what the chunk stores is what Engine.predict answers alone."""
    _, logs = day
    job, _ = submit(settings, store, logs)
    outcomes = run_all(store, scorer, job.job_id)
    assert [o.status for o in outcomes] == ["done"] * 3
    assert sum(o.conversations for o in outcomes) == 8
    rows = {(r.conversation_id, r.task): r for r in store.results(DATE)}
    assert len(rows) == sum(o.expected for o in outcomes) == sum(o.inserted for o in outcomes)
    engine = Engine(scorer.engine.model, scorer.engine.tokenizer, scorer.catalogue.truncation)
    records = [r for c in store.chunks(job.job_id) for r in read_chunk(jobs.Chunk.from_dict(c.chunk)) if isinstance(r, LogRecord)]
    for record in records[:4]:
        tasks = applicable(scorer.catalogue.tasks, record.conversation.channel, None)
        for task, p in zip(tasks, engine.predict([Request(t, record.conversation) for t in tasks])):
            stored = rows[(record.conversation_id, task.name)]
            assert stored.label == p.label and stored.labels == list(p.labels)
            for s in p.scores:
                assert math.isclose(stored.scores[s.label], s.probability, abs_tol=1e-5)
            assert stored.checkpoint == "tiny-llama" and stored.task_version == 0


def test_a_compact_checkpoint_answers_the_tasks_it_learnt_and_refuses_only_the_others(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """The worker loads a compact checkpoint as it was trained (markers, not
    instructions); a task it never learnt a marker for is a task error of its
    own, its neighbours in the conversation are answered."""
    import shutil

    from mtserve.checkpoints import write_manifest
    from mtserve.prompt import PromptStyle

    folder = tmp_path / "tiny-compact"
    shutil.copytree(tiny_llama_dir, folder)
    write_manifest(folder, id="tiny-compact", tasks=[{"name": "rc-a"}, {"name": "id"}], training={"prompt_format": 2, "suffixes": "compact"})
    s = load_settings(overrides={"batch.scorer": "local", "batch.checkpoint": str(folder), "device": "cpu", "dtype": "float32"}, env={})
    compact = LocalScorer.from_settings(s)
    assert compact.engine.renderer.style == PromptStyle(2, "compact", frozenset({"rc-a", "id"}))
    call = next(c.record for c in generate_day(DATE, 4, 0).conversations if c.record["channel"] == "call")
    from mtserve.inputs import input_from_dict

    conv = input_from_dict(call)
    refs = compact.plan(conv.channel, None)
    answers = dict(zip([r.name for r in refs], compact.score([(conv, refs)])[0]))
    assert isinstance(answers["rc-a"], Answer) and isinstance(answers["id"], Answer)
    others = {n: a for n, a in answers.items() if n not in ("rc-a", "id")}
    assert others and all(isinstance(a, TaskError) and isinstance(a.error, PreconditionError) for a in others.values())
    assert "never learnt its marker" in str(next(iter(others.values())).error)
    suffix = compact.engine.renderer.render(compact.tasks()["rc-a"], conv).suffix
    assert compact.engine.tokenizer.decode(suffix).endswith("assistant\nrc-a\n")


def test_a_chunk_runs_twice_and_resumes_without_writing_twice(settings: Settings, store: ResultStore, scorer: LocalScorer, day: Any) -> None:
    _, logs = day
    job, _ = submit(settings, store, logs)
    counting = Counting(scorer)
    first = jobs.run_chunk(store, counting, job.job_id, store.chunk(job.job_id, 0).chunk, group_size=4)
    assert first.inserted == first.expected == counting.asked > 0
    again = jobs.run_chunk(store, counting, job.job_id, store.chunk(job.job_id, 0).chunk)
    assert again.status == "skipped" and again.inserted == 0 and counting.asked == first.expected
    # A run that died after committing part of the chunk: 5 results are missing and the chunk is not done.
    r = schema.results.c
    with store.engine.begin() as conn:
        ids = [x[0] for x in conn.execute(schema.results.select().with_only_columns(r.id).where(r.job_id == job.job_id).limit(5))]
        conn.execute(delete(schema.results).where(r.id.in_(ids)))
        conn.execute(update(schema.chunks).where(schema.chunks.c.job_id == job.job_id, schema.chunks.c.chunk_index == 0).values(status="running"))
    counting.asked = 0
    resumed = jobs.run_chunk(store, counting, job.job_id, store.chunk(job.job_id, 0).chunk, group_size=4)
    assert resumed.status == "done" and resumed.inserted == 5 and counting.asked == 5
    assert store.chunk(job.job_id, 0).attempts == 2 and store.duplicate_keys(DATE) == 0


def test_tasks_selection_and_generation_only_when_named(settings: Settings, store: ResultStore, scorer: LocalScorer, day: Any) -> None:
    _, logs = day
    selection = check_selection(["id", "cs", "rc-a"], scorer.tasks().values())
    job, _ = submit(settings, store, logs, selection)
    jobs.run_chunk(store, scorer, job.job_id, store.chunk(job.job_id, 0).chunk)  # one chunk: greedy generation is slow
    rows = list(store.results(DATE))
    assert rows
    calls = {c.conversation_id for c in rows if c.channel == "call"}
    assert {r.task for r in rows} == {"id", "cs", "rc-a"}
    assert {r.conversation_id for r in rows if r.task == "rc-a"} == calls  # rc-a applies to calls only
    assert all(r.text is not None and r.label is None for r in rows if r.task == "cs")
    assert "cs" not in {t.name for t in applicable(scorer.catalogue.tasks, Channel.IM, None)}
    with pytest.raises(ValidationError, match="unknown task"):
        check_selection(["nope"], scorer.tasks().values())
    with pytest.raises(ValidationError, match="reads text input"):
        check_selection(["ec"], scorer.tasks().values())


def test_task_errors_are_counted_not_fatal(settings: Settings, store: ResultStore, scorer: LocalScorer, day: Any) -> None:
    _, logs = day
    job, _ = submit(settings, store, logs)
    out = jobs.run_chunk(store, Counting(scorer, fail_task="id"), job.job_id, store.chunk(job.job_id, 0).chunk)
    assert out.status == "done" and out.errors == out.conversations
    state = store.chunk(job.job_id, 0)
    assert state.errors == out.errors and "refused on purpose" in state.error_samples[0]["error"]


def test_a_changed_log_file_is_a_precondition_error(settings: Settings, store: ResultStore, scorer: LocalScorer, day: Any) -> None:
    _, logs = day
    job, _ = submit(settings, store, logs)
    for f in logs.iterdir():
        os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(PreconditionError, match="re-plan"):
        jobs.run_chunk(store, scorer, job.job_id, store.chunk(job.job_id, 0).chunk)


# -- completeness: finish_job and reconcile ---------------------------------------------------------
def test_finish_requeues_what_the_store_lacks(settings: Settings, store: ResultStore, scorer: LocalScorer, day: Any) -> None:
    _, logs = day
    job, rec = submit(settings, store, logs)
    jobs.run_chunk(store, scorer, job.job_id, store.chunk(job.job_id, 1).chunk)
    # The chord fired (say it counted a redelivered chunk twice) but chunks 0 and 2 are not in the store.
    assert jobs.finish_job(store, rec, settings, job.job_id, scorer.tasks()) == "requeued"
    assert rec.sent[-1] == [0, 2] and store.job(job.job_id).rounds == 2
    for i in (0, 2):
        jobs.run_chunk(store, scorer, job.job_id, store.chunk(job.job_id, i).chunk)
    assert jobs.finish_job(store, rec, settings, job.job_id, scorer.tasks()) == "finished"
    assert jobs.finish_job(store, rec, settings, job.job_id, scorer.tasks()) == "already"
    report = store.job(job.job_id).report
    assert report["complete"] and report["chunks"]["rounds"] == 2


def test_finish_gives_up_after_max_rounds(settings: Settings, store: ResultStore, scorer: LocalScorer, day: Any) -> None:
    settings = settings.model_copy(update={"batch": settings.batch.model_copy(update={"max_rounds": 1})})
    _, logs = day
    job, rec = submit(settings, store, logs)
    store.fail_chunk(job.job_id, 2, "files changed", final=True)
    assert jobs.finish_job(store, rec, settings, job.job_id, scorer.tasks()) == "incomplete"
    report = store.job(job.job_id).report
    assert report["status"] == "incomplete" and not report["complete"]
    assert report["chunks"]["failed"] == [{"chunk": 2, "error": "files changed"}]
    assert "Failed chunks" in render_markdown(report)
    # Fixed: the operator retries the failed chunk; once everything is done the job is reported finished.
    again = jobs.reconcile(store, rec, settings, job.job_id, retry_failed=True, force=True)
    assert again.action == "requeued" and again.chunks == [0, 1, 2]
    for c in store.chunks(job.job_id):
        jobs.run_chunk(store, scorer, job.job_id, c.chunk)
    assert jobs.reconcile(store, rec, settings, job.job_id).action == "finalize"
    assert jobs.finish_job(store, rec, settings, job.job_id, scorer.tasks()) == "finished"
    assert store.job(job.job_id).report["complete"]


def test_reconcile(settings: Settings, store: ResultStore, scorer: LocalScorer, day: Any) -> None:
    _, logs = day
    job, _ = submit(settings, store, logs)
    jobs.run_chunk(store, scorer, job.job_id, store.chunk(job.job_id, 0).chunk)
    rec = Recorder(depth=0)
    assert jobs.reconcile(store, rec, settings, job.job_id).action == "nothing"  # progressing
    later = time.time() + settings.batch.stall_after + 1
    busy = Recorder(depth=3)
    waiting = jobs.reconcile(store, busy, settings, job.job_id, now=later)
    assert waiting.action == "waiting" and "3 message(s)" in waiting.reason and busy.sent == []
    requeued = jobs.reconcile(store, rec, settings, job.job_id, now=later)
    assert requeued.action == "requeued" and requeued.chunks == [1, 2] and rec.sent == [[1, 2]]
    forced = jobs.reconcile(store, Recorder(depth=5), settings, job.job_id, force=True)
    assert forced.action == "requeued"
    for i in (1, 2):
        jobs.run_chunk(store, scorer, job.job_id, store.chunk(job.job_id, i).chunk)
    final = jobs.reconcile(store, rec, settings, job.job_id)
    assert final.action == "finalize" and rec.finalized == [job.job_id]  # settled, but the report task was lost
    status = jobs.job_status(store, job.job_id, stall_after=60)
    assert status.done == 3 and status.conversations_scored == 8 and not status.finished and status.rounds == 3


# -- report and export ---------------------------------------------------------------------------------
def test_report_and_export(settings: Settings, store: ResultStore, scorer: LocalScorer, day: Any) -> None:
    d, logs = day
    job, rec = submit(settings, store, logs)
    run_all(store, scorer, job.job_id)
    assert jobs.finish_job(store, rec, settings, job.job_id, scorer.tasks()) == "finished"
    report = store.job(job.job_id).report
    rows = list(store.results(DATE))
    truth = {(r["conversation_id"], r["task"]): r["label"] for r in d.label_rows() if "conversation_id" in r and "label" in r}
    for name, t in report["tasks"].items():
        mine = [r for r in rows if r.task == name]
        assert t["count"] == len(mine)
        if t["taxonomy"] == "binary":
            assert t["positive_rate"] == pytest.approx(sum(r.label == "yes" for r in mine) / len(mine), abs=1e-4)
            hits = sum(r.label == truth[(r.conversation_id, name)] for r in mine)
            assert t["synthetic_ground_truth"]["accuracy"] == pytest.approx(hits / len(mine), abs=1e-4)
        if t["taxonomy"] == "ordinal":
            assert t["mean_expected_value"] == pytest.approx(sum(r.expected_value for r in mine) / len(mine), abs=1e-3)
        if t["taxonomy"] == "multilabel":
            assert set(t["label_rates"]) == set(scorer.tasks()[name].label_names)
    assert report["rejects"]["total"] == 3 and report["previous"] is None
    md = render_markdown(report)
    assert all(f"| {name} |" in md for name in report["tasks"]) and "SYNTHETIC" in md
    assert json.loads(Path(report["files"]["json"]).read_text())["job_id"] == job.job_id
    table = ds.dataset(report["export"], format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(rows)
    one = table.filter(ds.field("task") == "see").to_pylist()[0]
    assert {s["label"] for s in one["scores"]} == {"1", "2", "3", "4", "5"} and one["expected_value"] is not None


# -- the trivial baseline beside the synthetic accuracy ---------------------------------------------
def report_with_truth(tmp_path: Path, rows: Sequence[tuple[str, str, Any, Any]]) -> dict[str, Any]:
    """build_report over hand-written results, no model: rows are
    (task, conversation_id, the model's answer, the gold label). A str answer
    is a label, a list a label set, a None answer a generation row."""
    tasks = {t.name: t for t in load_catalogue(builtin_catalogue_path("hotel")).tasks}
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"conversation_id": c, "task": t, "label": gold}) + "\n" for t, c, _, gold in rows))
    results = [
        ResultRow(c, t, 0, "ckpt", DATE, "call", "job-1", 0, answer if isinstance(answer, str) else None,
                  answer if isinstance(answer, list) else ([answer] if isinstance(answer, str) else []), {},
                  text="a summary" if answer is None else None)
        for t, c, answer, _ in rows
    ]
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        store.upsert_results(results)
        job = Job("job-1", DATE, str(tmp_path), "running", "local", None, 4, 1, len(rows), 0, {}, "", str(labels), 1, time.time())
        chunk = ChunkState("job-1", 0, {}, len(rows), "done", 1, None, 1, None, None, None, len(rows), len(rows), len(rows), 0, [],
                           sorted({(t, 0, "ckpt") for t, *_ in rows}), 1.0, None)
        return build_report(store, job, [chunk], tasks, status="finished", finished_at=time.time())
    finally:
        store.close()


def md_row(md: str, task: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {task} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_trivial_equals_a_model_that_answers_the_majority(tmp_path: Path) -> None:
    gold = ["yes", "no", "no", "no"]
    rows = [("id", f"c{i}", "no", g) for i, g in enumerate(gold)] + [("cs", "c0", None, "a summary")]
    report = report_with_truth(tmp_path, rows)
    acc = report["tasks"]["id"]["synthetic_ground_truth"]
    assert acc["n"] == 4 and acc["accuracy"] == 0.75
    assert acc["trivial"] == {"answer": "no", "accuracy": 0.75}
    assert "synthetic_ground_truth" not in report["tasks"]["cs"]  # generation: no accuracy, so no trivial either
    md = render_markdown(report)
    assert "| accuracy (SYNTHETIC) | trivial (majority of the day) | model - trivial |" in md
    assert md_row(md, "id")[-3:] == ["75.0%", "75.0% (no)", "+0.0 pp"]
    assert md_row(md, "cs")[-3:] == ["-", "-", "-"]
    assert "Trivial column: the constant answer" in md


def test_trivial_breaks_a_tie_by_label_order(tmp_path: Path) -> None:
    """2 no and 2 yes, the no first: the task lists yes first, so yes (neither
    first-seen nor alphabetical order would say so)."""
    gold = ["no", "no", "yes", "yes"]
    answers = ["yes", "yes", "yes", "no"]
    report = report_with_truth(tmp_path, [("id", f"c{i}", a, g) for i, (a, g) in enumerate(zip(answers, gold))])
    acc = report["tasks"]["id"]["synthetic_ground_truth"]
    assert acc["accuracy"] == 0.25  # c2 only
    assert acc["trivial"] == {"answer": "yes", "accuracy": 0.5}
    assert md_row(render_markdown(report), "id")[-2:] == ["50.0% (yes)", "-25.0 pp"]


def test_trivial_of_a_multilabel_task_is_the_most_frequent_gold_set(tmp_path: Path) -> None:
    """driver_late is the most frequent single label (4 of 7) but {no_show,
    detour} the most frequent set (3 of 7, however its labels are listed);
    exact-set accuracy, like the model's."""
    gold = [["no_show", "detour"], ["detour", "no_show"], ["no_show", "detour"],
            ["driver_late"], ["driver_late"], ["driver_late", "lost_item"], ["lost_item", "driver_late"]]
    report = report_with_truth(tmp_path, [("csc", f"c{i}", ["driver_late"], g) for i, g in enumerate(gold)])
    acc = report["tasks"]["csc"]["synthetic_ground_truth"]
    assert acc["exact_set_accuracy"] == pytest.approx(2 / 7, abs=1e-4) and "accuracy" not in acc
    assert acc["trivial"] == {"answer": ["no_show", "detour"], "accuracy": pytest.approx(3 / 7, abs=1e-4)}  # in label order
    assert md_row(render_markdown(report), "csc")[-2:] == ["42.9% ({no_show, detour})", "-14.3 pp"]


def test_input_kinds_are_conversation_only() -> None:
    """The batch scores conversations: a text task never applies."""
    from mtserve.tasks import builtin_catalogue_path, load_catalogue

    cat = load_catalogue(builtin_catalogue_path("hotel"))
    for channel in (Channel.CALL, Channel.IM):
        assert all(t.input_kind is InputKind.CONVERSATION for t in applicable(cat.tasks, channel, None))
