"""Online/offline parity. A registry and an inference service run in this
process on real sockets (the hotel catalogue, every task routed to the tiny
checkpoint); a batch worker subprocess scores a SYNTHETIC day through the
service (scorer grpc). For a sample of conversations, what the batch stored
is what the service answers to a direct ClassifyMany call for the same
input, and what the in-worker engine (scorer local) answers too."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batch.local_scorer import LocalScorer
from batch.logs import LogRecord, iter_records
from batch.synth import generate_day, write_day
from mtserve.config import load_settings

DATE = "2024-09-01"

# Two inference services live at once here: their metrics endpoints (fixed default ports) stay off.
NO_METRICS = {"registry.metrics_address": "", "inference.metrics_address": ""}


@pytest.fixture
def stack(tmp_path: Path, hotel: Any, tiny_llama_dir: Path, wait_for: Callable[..., Any]) -> Iterator[dict[str, Any]]:
    from mtserve.records import RouteChange
    from mtserve_api.inference import InferenceClient
    from mtserve_api.registry import RegistryClient
    from services.inference.server import create_server as inference_server
    from services.registry.server import create_server as registry_server

    settings = load_settings(
        overrides={
            "device": "cpu", "dtype": "float32", "registry.database_url": f"sqlite:///{tmp_path / 'registry.db'}",
            "inference.state_file": str(tmp_path / "inference-state.json"), "inference.max_wait_ms": 5,
            "registry.watch_poll_seconds": 0.5, "registry.shutdown_grace_seconds": 1, "inference.shutdown_grace_seconds": 2,
            **NO_METRICS,
        },
        env={},  # the session's home: its local admin token is what the clients send
    )
    registry, rport = registry_server("127.0.0.1:0", settings)
    registry.start()
    raddr = f"127.0.0.1:{rport}"
    inference = None
    clients: list[Any] = []
    try:
        reg = RegistryClient(raddr, timeout=30)
        clients.append(reg)
        reg.apply_catalogue(hotel)
        ckpt = reg.register_checkpoint(str(tiny_llama_dir))[0].id
        _, revision = reg.set_routes([RouteChange(t.name, ckpt) for t in hotel.tasks], reason="parity test")
        inference, iport = inference_server("127.0.0.1:0", settings, registry_address=raddr)
        inference.start()
        core = inference.core
        wait_for(lambda: core.serving is not None and core.serving.state.revision >= revision, 60, "inference to follow the routes")
        client = InferenceClient(f"127.0.0.1:{iport}", timeout=60)
        clients.append(client)
        yield {"registry": raddr, "inference": f"127.0.0.1:{iport}", "client": client}
    finally:
        for c in clients:
            c.close()
        if inference is not None:
            inference.stop(grace=2)
        registry.stop(grace=1)


def test_batch_answers_equal_the_services(
    tmp_path: Path, tiny_llama_dir: Path, local_redis: str, make_batch_env: Callable[..., Any], stack: dict[str, Any], hotel: Any
) -> None:
    env = make_batch_env(
        tmp_path / "env", tiny_llama_dir, broker_url=local_redis, scorer="grpc", inference_address=stack["inference"],
        chunk_size=10, extra_env={"MTSERVE_REGISTRY__ADDRESS": stack["registry"]},
    )
    try:
        logs = write_day(generate_day(DATE, 20, 21, mix_chinese=True), tmp_path / "day").logs
        worker = env.start_worker("grpc", env={"MTSERVE_BATCH__WORKER_CONCURRENCY": "2"})
        out = json.loads(env.cli("batch", "submit", "--logs", str(logs), "--date", DATE, "--wait", "--json").stdout)
        assert out["status"] == "finished" and out["report"]["complete"], out
        assert out["report"]["scorer"] == "grpc" and out["report"]["checkpoints"] == {"tiny-llama": out["report"]["results"]}
        # gRPC channels are opened after the fork: in the pool processes, never in the parent.
        assert "cygrpc" not in Path(f"/proc/{worker.pid}/maps").read_text()
        assert all("cygrpc" in Path(f"/proc/{pid}/maps").read_text() for pid in worker.children())
        stored: dict[str, dict[str, Any]] = {}
        for r in env.store().results(DATE):
            stored.setdefault(r.conversation_id, {})[r.task] = r
        records = [r for r in iter_records(logs) if isinstance(r, LogRecord)]
        local = LocalScorer.from_settings(load_settings(
            overrides={"batch.scorer": "local", "batch.checkpoint": str(tiny_llama_dir), "device": "cpu", "dtype": "float32"}, env={},
        ))
        for record in records[::4]:  # a sample
            answers, skipped = stack["client"].classify_many(record.conversation)
            assert skipped == []
            mine = stored[record.conversation_id]
            assert sorted(mine) == sorted(a.prediction.task for a in answers)  # the same tasks apply
            refs = local.plan(record.conversation.channel, None)
            offline = {a.prediction.task: a.prediction for a in local.score([(record.conversation, refs)])[0]}
            for a in answers:
                p, row = a.prediction, mine[a.prediction.task]
                assert (row.task_version, row.checkpoint) == (p.task_version, a.checkpoint_id) == (1, "tiny-llama")
                assert row.label == p.label and row.labels == list(p.labels)
                assert list(row.scores) == [s.label for s in p.scores]
                assert list(row.scores.values()) == pytest.approx([s.probability for s in p.scores], abs=1e-5)
                if p.expected_value is not None:
                    assert row.expected_value == pytest.approx(p.expected_value, abs=1e-5)
                o = offline[p.task]  # the in-worker engine: same core, same answer
                assert o.label == p.label
                assert [s.probability for s in o.scores] == pytest.approx([s.probability for s in p.scores], abs=1e-5)
    finally:
        env.cleanup()


def test_unavailable_inference_service_is_retried_with_backoff(
    tmp_path: Path, tiny_llama_dir: Path, local_redis: str, make_batch_env: Callable[..., Any], stack: dict[str, Any], wait_for: Callable[..., Any]
) -> None:
    """The chunks reach an address where no inference service listens yet
    (UNAVAILABLE): they back off and retry; once a service comes up there,
    the job finishes."""
    import socket

    from services.inference.server import create_server as inference_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = make_batch_env(
        tmp_path / "env", tiny_llama_dir, broker_url=local_redis, scorer="grpc", inference_address=f"127.0.0.1:{port}",
        chunk_size=10, retry_backoff_max=3, max_retries=20, extra_env={"MTSERVE_REGISTRY__ADDRESS": stack["registry"]},
    )
    late = None
    try:
        logs = write_day(generate_day(DATE, 12, 22), tmp_path / "day").logs
        worker = env.start_worker("patient")
        job = json.loads(env.cli("batch", "submit", "--logs", str(logs), "--date", DATE, "--json").stdout)["job_id"]
        store = env.store()
        wait_for(lambda: worker.log().count("UNAVAILABLE") >= 2, 60, "chunks to meet UNAVAILABLE and retry")
        assert "retry 2 in" in worker.log() or "retry 1 in" in worker.log()
        settings = load_settings(overrides={"device": "cpu", "dtype": "float32", "inference.state_file": str(tmp_path / "late.json"),
                                            **NO_METRICS}, env={})
        late, _ = inference_server(f"127.0.0.1:{port}", settings, registry_address=stack["registry"])
        late.start()
        out = json.loads(env.cli("batch", "status", job, "--wait", "--timeout", "240", "--json").stdout)
        assert out["finished"] and store.job(job).report["complete"]
        assert max(c.attempts for c in store.chunks(job)) >= 2
    finally:
        env.cleanup()
        if late is not None:
            late.stop(grace=1)
