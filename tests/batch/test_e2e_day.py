"""End to end over a real Redis and a real worker subprocess (not eager
mode): a SYNTHETIC day of 300 conversations with bad records, submitted with
`mtserve batch submit --wait`, then the same day again, then the next day.

One environment (queue, key prefix, results database) and one worker serve
the whole module: starting a worker (torch import, model load) is the slow
part, and the later tests build on the first day's results on purpose.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from batch.logs import read_rejects
from batch.routing import applicable
from batch.synth import SynthDay, generate_day, write_day
from mtserve.tasks import Catalogue, Channel, builtin_catalogue_path, load_catalogue

DATE, NEXT = "2024-05-01", "2024-05-02"
CATALOGUE: Catalogue = load_catalogue(builtin_catalogue_path("hotel"))


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, local_redis: str, make_batch_env: Callable[..., Any]
) -> Iterator[Any]:
    e = make_batch_env(tmp_path_factory.mktemp("e2e"), tiny_llama_dir, broker_url=local_redis, chunk_size=40)
    try:
        yield e
    finally:
        e.cleanup()


@pytest.fixture(scope="module")
def worker(env: Any) -> Any:
    return env.start_worker("e2e")


@pytest.fixture(scope="module")
def day(env: Any) -> tuple[SynthDay, Path]:
    d = generate_day(DATE, 300, 5, mix_chinese=True, bad_records=8)
    paths = write_day(d, env.root / "day1", formats=("jsonl", "jsonl.gz", "parquet"))
    return d, paths.logs


@pytest.fixture(scope="module")
def first(env: Any, worker: Any, day: tuple[SynthDay, Path]) -> dict:
    out = env.cli("batch", "submit", "--logs", str(day[1]), "--date", DATE, "--wait", "--json", "--timeout", "300")
    return json.loads(out.stdout)


def expected_pairs(d: SynthDay) -> set[tuple[str, str]]:
    return {
        (c.id, t.name)
        for c in d.conversations
        for t in applicable(CATALOGUE.tasks, Channel(c.record["channel"]), None)
    }


def stored_pairs(env: Any, date: str) -> Counter:
    return Counter((r.conversation_id, r.task) for r in env.store().results(date))


def test_a_day_is_scored_end_to_end(env: Any, day: tuple[SynthDay, Path], first: dict) -> None:
    d, _logs = day
    assert first["status"] == "finished", first
    report = first["report"]
    # Every valid conversation has exactly one result per applicable task, and nothing else.
    pairs = stored_pairs(env, DATE)
    want = expected_pairs(d)
    assert set(pairs) == want
    assert set(pairs.values()) == {1}
    assert report["results"] == report["expected_results"] == len(want)
    assert report["complete"] is True and report["conversations"] == 300
    # Rejects: counted by reason, written with their reasons.
    assert report["rejects"]["total"] == 8
    assert report["rejects"]["by_reason"] == dict(Counter(d.bad_records))
    rejects = read_rejects(report["rejects"]["file"])
    assert len(rejects) == 8 and all(r.reason for r in rejects)
    # Every applicable task is in the report, with its checkpoint and figures.
    tasks = {t.name for c in (Channel.CALL, Channel.IM) for t in applicable(CATALOGUE.tasks, c, None)}
    assert set(report["tasks"]) == tasks
    for t in report["tasks"].values():
        assert t["checkpoints"] == {"tiny-llama@v0": t["count"]}
        if t["taxonomy"] == "binary":
            assert 0.0 <= t["positive_rate"] <= 1.0
        if t["taxonomy"] == "ordinal":
            assert t["mean_expected_value"] is not None
        assert t["synthetic_ground_truth"]["n"] == t["count"]  # labels.jsonl sits beside logs/
    assert report["ground_truth"]["synthetic"] is True and "SYNTHETIC" in report["ground_truth"]["note"]
    assert report["throughput"]["conversations_per_second"] > 0
    # The Parquet export: one partition per task.
    export = Path(report["export"])
    assert sorted(p.name for p in export.iterdir()) == sorted(f"task={t}" for t in tasks)
    table = ds.dataset(export, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(want)
    assert set(table.column("task").to_pylist()) == tasks


def test_status_and_report_commands(env: Any, first: dict) -> None:
    job = first["job_id"]
    status = json.loads(env.cli("batch", "status", job, "--json").stdout)
    assert status["finished"] and status["done"] == status["chunks"] and status["conversations_scored"] == 300
    md = env.cli("batch", "report", job).stdout
    assert md.startswith(f"# Batch report {DATE}") and "| rc-a | binary |" in md and "SYNTHETIC" in md
    by_date = json.loads(env.cli("batch", "report", "--date", DATE, "--json").stdout)
    assert by_date["job_id"] == job
    assert Path(env.root / "out" / DATE / "report.md").read_text(encoding="utf-8") == md.rstrip("\n") + "\n"


def test_the_same_day_twice_writes_no_duplicate_rows(env: Any, day: tuple[SynthDay, Path], first: dict) -> None:
    store = env.store()
    before = store.count_results(date=DATE)
    out = json.loads(env.cli("batch", "submit", "--logs", str(day[1]), "--date", DATE, "--wait", "--json", "--timeout", "300").stdout)
    assert out["status"] == "finished" and out["job_id"] != first["job_id"]
    assert store.count_results(date=DATE) == before
    assert store.count_results(job_id=out["job_id"]) == 0  # every key was there already
    assert store.duplicate_keys(DATE) == 0
    assert out["report"]["results"] == first["report"]["results"]  # the report still covers the whole day
    assert out["report"]["tasks"]["id"]["distribution"] == first["report"]["tasks"]["id"]["distribution"]


def test_next_day_reports_the_change(env: Any, first: dict) -> None:
    d = generate_day(NEXT, 40, 6)
    logs = write_day(d, env.root / "day2").logs
    out = json.loads(
        env.cli("batch", "submit", "--logs", str(logs), "--date", NEXT, "-t", "id,see", "-t", "hs", "--wait", "--json").stdout
    )
    report = out["report"]
    assert set(report["tasks"]) == {"id", "see", "hs"}  # --tasks restricts
    assert report["previous"]["date"] == DATE
    change = report["tasks"]["id"]["change"]
    assert change["count"] == 40 - 300
    prev, now = first["report"]["tasks"]["id"]["positive_rate"], report["tasks"]["id"]["positive_rate"]
    assert change["positive_rate"] == pytest.approx(now - prev, abs=1e-3)
    assert "mean_expected_value" in report["tasks"]["see"]["change"]


def test_worker_parent_has_no_torch_its_pool_process_does(worker: Any, first: dict) -> None:
    """The scorer (torch, the model) is built after the fork, in the pool process only."""

    def maps(pid: int) -> str:
        return Path(f"/proc/{pid}/maps").read_text()

    parent = maps(worker.pid)
    assert "libtorch" not in parent and "cygrpc" not in parent
    children = worker.children()
    assert children, "the worker has no pool process"
    assert any("libtorch" in maps(pid) for pid in children)


def test_each_pool_process_chose_its_torch_threads(worker: Any, first: dict) -> None:
    """A local-scorer pool process sets torch's threads on purpose and says why
    (here the test's OMP_NUM_THREADS=1 wins, as an operator's choice would)."""
    log = worker.log()
    assert any(f"worker process {pid}: 1 torch thread(s) (OMP_NUM_THREADS)" in log for pid in worker.children()), log[-2000:]
