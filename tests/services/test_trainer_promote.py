"""The issue's "done when", end to end over real sockets: `mtserve train run
--promote` on a toy job produces a checkpoint that the registry routes to and
the inference service loads and answers from, for the qualified tasks only;
the promotion is one transaction (a reader polling GetRoutes never sees
half of it); the same through the trainer service; and a job asked to
promote without a registry fails before training."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from mtserve.inputs import Text
from mtserve.records import RouteChange
from mtserve.tasks import Channel, load_catalogue
from mtserve_api.registry import RegistryClient
from mtserve_cli import main
from trainer.evaluate import Trivial
from trainer.promote import register_and_promote
from trainer.results import JobResult, TaskRow
from trainer.toy import PROMOTION_LABELS, write_promotion_job

from .conftest import Stack, make_settings, start_registry, start_stack, wait_for

TEXT = Text("The breakfast was fine. Stay 7.", Channel.REVIEW)
TASKS = list(PROMOTION_LABELS)  # polarity, mood: qualify; stubborn: cannot (trainer/toy.py says why)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


class RoutePoller:
    """Reads the route table over gRPC as fast as it can, in a thread, and
    keeps every table it saw."""

    def __init__(self, address: str):
        self.client = RegistryClient(address, timeout=30)
        self.tables: list[tuple[int, dict[str, str]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            routes, revision = self.client.get_routes()
            self.tables.append((revision, {r.task: r.checkpoint_id for r in routes}))

    def close(self) -> list[tuple[int, dict[str, str]]]:
        self.stop.set()
        self.thread.join(timeout=30)
        routes, revision = self.client.get_routes()
        self.tables.append((revision, {r.task: r.checkpoint_id for r in routes}))
        self.client.close()
        return self.tables


def promo_stack(tmp_path: Path, job_dir: Path, tiny_llama_dir: Path, *, inference: bool) -> Stack:
    """A registry with the toy catalogue, every task routed to tiny-llama,
    and (optionally) an inference service following it."""
    settings = make_settings(tmp_path)
    registry, address = start_registry(settings)
    stack = Stack(settings, registry, address)
    client = stack.registry_client()
    client.apply_catalogue(load_catalogue(job_dir / "catalogue.yaml"))
    client.register_checkpoint(str(tiny_llama_dir))
    client.set_routes([RouteChange(t, "tiny-llama") for t in TASKS], reason="before training")
    if inference:
        stack.start_inference()
        stack.wait_synced()
    return stack


def test_train_run_promote_routes_the_qualified_tasks_and_inference_answers_from_the_new_checkpoint(tmp_path, tiny_llama_dir, capsys):
    job = write_promotion_job(tmp_path / "job", tiny_llama_dir)
    stack = promo_stack(tmp_path, tmp_path / "job", tiny_llama_dir, inference=True)
    try:
        inference = stack.inference_client()
        assert {t: inference.classify(t, TEXT).checkpoint_id for t in TASKS} == dict.fromkeys(TASKS, "tiny-llama")
        revision_before = stack.registry.store.revision()

        poller = RoutePoller(stack.registry_address)
        code, out, err = run(capsys, "train", "run", "-f", str(job), "--promote", "--registry", stack.registry_address, "--json")
        tables = poller.close()
        assert code == 0, err
        result = json.loads(out)
        new = result["groups"][0]["checkpoint"]["id"]
        promotion = result["promotion"]
        by = {t["task"]: t for t in promotion["tasks"]}
        assert promotion["moved"] == ["polarity", "mood"] and promotion["stayed"] == ["stubborn"]
        for task in ("polarity", "mood"):
            assert by[task]["route_before"] == {"checkpoint_id": "tiny-llama", "task_version": 1}
            assert by[task]["route_after"] == {"checkpoint_id": new, "task_version": 1}
            row = next(r for r in result["rows"] if r["task"] == task)
            # The tiny model's baselines may not beat the majority class: the reason must then say so.
            degenerate = "; against a degenerate baseline (it does not beat its trivial baseline)" if row["degenerate_baseline"] else ""
            assert by[task]["reason"] == "qualified: ratio 1.000 (95% CI 1.000-1.000), at or above 0.99 of its baseline" + degenerate
        assert by["stubborn"]["route_after"] == {"checkpoint_id": "tiny-llama", "task_version": 1}
        assert by["stubborn"]["reason"] == "not qualified: ratio 0.000 (95% CI 0.000-0.000), below 0.99 of its baseline"
        assert promotion["registered"] == [{"id": new, "path": str(Path(result["checkpoints"][0]).resolve()), "changed": True}]

        # One transaction: the checkpoint's registration and the route change are the only two writes,
        # both moved routes carry the same commit time, and no reader ever saw one moved without the other.
        assert promotion["revision"] == revision_before + 2 == stack.registry.store.revision()
        routes = {r.task: r for r in stack.registry.store.get_routes()[0]}
        assert routes["polarity"].updated_at == routes["mood"].updated_at != routes["stubborn"].updated_at
        assert len(tables) > 10
        for _, table in tables:
            assert table["polarity"] == table["mood"] in ("tiny-llama", new) and table["stubborn"] == "tiny-llama", table
        assert tables[0][1]["mood"] == "tiny-llama" and tables[-1][1]["mood"] == new

        # the inference service follows the registry and answers the moved tasks from the new checkpoint
        stack.wait_synced(promotion["revision"])
        answers = {t: inference.classify(t, TEXT) for t in TASKS}
        assert {t: a.checkpoint_id for t, a in answers.items()} == {"polarity": new, "mood": new, "stubborn": "tiny-llama"}
        assert answers["polarity"].prediction.label == "positive"  # what the multi-task model learned
        info = {c.id: c for c in inference.model_info().checkpoints}
        assert info[new].loaded and sorted(info[new].tasks) == ["mood", "polarity"]

        # again, as a table (finished runs reused): nothing left to move
        code, out, err = run(capsys, "train", "run", "-f", str(job), "--promote", "--registry", stack.registry_address)
        assert code == 0, err
        assert "already routed" in out and "moved: none   stayed: stubborn" in out and f"registered: {new} (already registered)" in out
        assert stack.registry.store.revision() == promotion["revision"]
    finally:
        stack.stop()


def test_promote_without_a_reachable_registry_fails_before_training(tmp_path, tiny_llama_dir, capsys):
    job = write_promotion_job(tmp_path, tiny_llama_dir)
    code, out, err = run(capsys, "train", "run", "-f", str(job), "--promote", "--registry", "127.0.0.1:1")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: --promote: the registry at 127.0.0.1:1 is not reachable") and "Nothing was trained" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()


def test_a_promotion_of_many_tasks_is_one_transaction(tmp_path, hotel, tiny_llama_dir, tiny_qwen_dir):
    """Every hotel task qualified on one model (a hand-made result naming
    tiny-qwen): each promotion moves all 18 routes in one SetRoutes, back and
    forth, while a reader polls; it only ever sees all of them on one side."""
    stack = start_stack(make_settings(tmp_path), hotel, [tiny_llama_dir, tiny_qwen_dir], route_to="tiny-llama", inference=False)
    try:
        names = [t.name for t in hotel.tasks]

        def result(checkpoint: str, folder: Path) -> JobResult:
            rows = [TaskRow(t.name, None, t.content_hash(), Trivial("none", None, None), [], checkpoint=checkpoint, qualified=True,
                            verdict="qualified", ratio=1.0, ratio_low=1.0, ratio_high=1.0) for t in hotel.tasks]
            return JobResult("flip", "two_stage", rows, [], [str(folder)], None, len(rows), [], [], 0.0)

        poller = RoutePoller(stack.registry_address)
        with RegistryClient(stack.registry_address) as client:
            for i in range(6):
                target, folder = ("tiny-qwen", tiny_qwen_dir) if i % 2 == 0 else ("tiny-llama", tiny_llama_dir)
                report = register_and_promote(result(target, folder), client, promote=True, address=stack.registry_address)
                assert sorted(report.moved) == sorted(names)
                wait_for(lambda i=i: len(poller.tables) > 5 * (i + 1), "the poller to read a few tables")
        tables = poller.close()
        sides = set()
        for _, table in tables:
            assert set(table) == set(names)
            assert len(set(table.values())) == 1, f"a reader saw half a promotion: {table}"
            sides.add(next(iter(table.values())))
        assert sides == {"tiny-llama", "tiny-qwen"}
    finally:
        stack.stop()


def test_a_service_job_promotes_when_it_ends(tmp_path, tiny_llama_dir):
    """StartJob with promote: the job runs on a train worker (a Celery process),
    which registers and promotes with its own credentials when it ends."""
    from services.trainer.client import TrainerClient
    from services.trainer.server import create_server

    from .train_workers import make_train_env

    job = write_promotion_job(tmp_path / "job", tiny_llama_dir)
    stack = promo_stack(tmp_path, tmp_path / "job", tiny_llama_dir, inference=False)
    env = make_train_env(tmp_path / "train", trainer_root=tmp_path.parent)
    trainer = None
    try:
        env.start_worker("w1")
        trainer, port = create_server("127.0.0.1:0", make_settings(tmp_path, **env.overrides), registry_address=stack.registry_address)
        trainer.start()
        with TrainerClient(f"127.0.0.1:{port}") as client:
            submitted = client.start_job(job.read_text(), base_dir=str(job.parent), promote=True)
            assert submitted.options.promote and submitted.options.registry_address == stack.registry_address
            events = [v for kind, v in client.watch_job(submitted.id) if kind == "event"]
            done = client.get_job(submitted.id)
        assert done.state.value == "succeeded", done.error
        kinds = [e["event"] for e in events]
        assert kinds.index("registry_checked") < kinds.index("job_started") < kinds.index("promotion") < kinds.index("result")
        promotion = done.result["promotion"]
        new = done.result["groups"][0]["checkpoint"]["id"]
        assert promotion["moved"] == ["polarity", "mood"] and promotion["stayed"] == ["stubborn"]
        routes = {r.task: r.checkpoint_id for r in stack.registry.store.get_routes()[0]}
        assert routes == {"polarity": new, "mood": new, "stubborn": "tiny-llama"}
    finally:
        if trainer is not None:
            trainer.stop()
        env.cleanup()
        stack.stop()
