"""The trainer service over real sockets, its jobs on real train workers
(Celery processes on a real Redis, queue `train`) with tiny models. Submit,
watch to completion (replayed, then live), get and list, through the CLI;
cancel a running and a queued job; stop the service while a job trains (the
job goes on: it is the worker's); SIGKILL the worker training a job and see
it resume on a second worker from its last saved state, ending with exactly
the result of an uninterrupted run; every error with its status code."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from mtserve.checkpoints import read_manifest
from mtserve.errors import NotFoundError, PreconditionError, UnavailableError, ValidationError
from mtserve_api.client import connect
from mtserve_api.v1 import trainer_pb2 as tpb
from mtserve_api.v1 import trainer_pb2_grpc as tpb_grpc
from mtserve_cli import main
from services.trainer.client import TrainerClient
from services.trainer.records import JobState
from trainer.job import parse_job
from trainer.pipeline import run_job
from trainer.toy import toy_job, write_toy_data

from .conftest import make_settings, wait_for
from .train_workers import TrainEnv, make_train_env

# Long enough to be caught mid-stage (a tiny-model step takes a few hundredths of a second).
LONG = {"baselines": {"train": False}, "max_steps": 5000, "mixture": {"stage1_steps": 4, "stage2_steps": 4000},
            "training": {"lr": 1e-3, "micro_batch": 2, "grad_accum": 2, "warmup_ratio": 0.1, "state_every_steps": 50}}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The reference run in this process does the same arithmetic as the job processes (one thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_job(folder: Path, base: Path, **over: Any) -> Path:
    write_toy_data(folder, tasks=("sentiment", "topic"), train=16, dev=6)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(toy_job(folder, base_model=str(base), **over)), encoding="utf-8")
    return path


def trainer_settings(tmp_path: Path, env: TrainEnv, **over: Any) -> Any:
    return make_settings(tmp_path, **{**env.overrides, **over})


def start_trainer(tmp_path: Path, env: TrainEnv, **over: Any) -> tuple[Any, str]:
    from services.trainer.server import create_server

    service, port = create_server("127.0.0.1:0", trainer_settings(tmp_path, env, **over))
    service.start()
    return service, f"127.0.0.1:{port}"


@pytest.fixture
def train_env(tmp_path):
    env = make_train_env(tmp_path / "train", trainer_root=tmp_path)
    yield env
    env.cleanup()


@pytest.fixture
def trainer(tmp_path, train_env):
    """The service and one train worker."""
    train_env.start_worker("w1")
    service, address = start_trainer(tmp_path, train_env)
    client = TrainerClient(address, cancel_grace=5)
    yield service, address, client
    client.close()
    service.stop()


def run(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def wait_step(client: TrainerClient, job_id: str, stage: str = "stage2") -> Any:
    return wait_for(lambda: (j := client.get_job(job_id)).progress.stage == stage and j.progress.step > 0 and j, f"job {job_id} to train", timeout=120)


# -- submit, watch, status -------------------------------------------------------------------


def test_submit_watch_status_through_the_cli(trainer, tmp_path, tiny_llama_dir, capsys):
    _, address, client = trainer
    job = write_job(tmp_path / "toy", tiny_llama_dir)
    code, out, err = run(capsys, "train", "submit", "-f", str(job), "--server", address, "--json")
    assert code == 0, err
    submitted = json.loads(out)
    job_id = submitted["id"]
    assert submitted["state"] in ("queued", "running") and submitted["name"] == "toy"
    assert submitted["options"]["base_dir"] == str(job.parent) and submitted["spec_yaml"] == job.read_text()

    code, out, err = run(capsys, "train", "watch", job_id, "--server", address, "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    events = [e for e in lines if e["event"] != "job"]
    jobs = [e["job"] for e in lines if e["event"] == "job"]
    assert jobs[-1]["state"] == "succeeded" and lines[-1]["event"] == "job"
    kinds = [e["event"] for e in events]
    for kind in ("job_queued", "attempt_started", "job_started", "stage_started", "step", "eval", "run_finished", "job_finished", "result", "job_state"):
        assert kind in kinds, kind
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    step = next(e for e in events if e["event"] == "step")
    assert {"stage", "step", "steps", "loss", "tokens_per_s"} <= set(step)
    assert next(e for e in events if e["event"] == "eval")["summary"]["values"]

    # status: one job, then the list
    code, out, _ = run(capsys, "train", "status", job_id, "--server", address, "--json")
    status = json.loads(out)
    assert status["state"] == "succeeded" and status["result"]["method"] == "two_stage" and len(status["result"]["rows"]) == 2
    assert status["attempts"][0]["outcome"] == "succeeded" and status["attempts"][0]["exit_code"] == 0
    assert status["progress"]["runs_done"] == 3 and set(status["progress"]["dev"]) == {"sentiment", "topic"}
    code, out, _ = run(capsys, "train", "status", job_id, "--server", address)
    assert code == 0 and f"job {job_id} (toy): succeeded" in out and "qualified" in out and "checkpoint: " in out
    code, out, _ = run(capsys, "train", "status", "--server", address, "--json")
    assert [j["id"] for j in json.loads(out)] == [job_id]
    assert client.list_jobs(states=[JobState.FAILED]) == [] and client.list_jobs(name="other") == []

    # a second watch replays the same log; from_seq starts in the middle; the typed fields are filled for other clients
    replay = [v for kind, v in client.watch_job(job_id) if kind == "event"]
    assert [e["seq"] for e in replay] == [e["seq"] for e in events]
    middle = events[len(events) // 2]["seq"]
    assert next(v["seq"] for kind, v in client.watch_job(job_id, from_seq=middle) if kind == "event") == middle
    with connect(address) as channel:
        raw = [m.event for m in tpb_grpc.TrainerStub(channel).WatchJob(tpb.WatchJobRequest(id=job_id), timeout=30) if m.HasField("event")]
    first_step = next(m for m in raw if m.event == "step")
    assert first_step.HasField("loss") and first_step.HasField("tokens_per_s") and first_step.steps > 0 and first_step.stage
    assert dict(next(m for m in raw if m.event == "eval").values)
    done = client.get_job(job_id)
    assert read_manifest(done.result["checkpoints"][0]).id == done.result["groups"][0]["checkpoint"]["id"]

    # a finished job can be neither cancelled nor resumed
    with pytest.raises(PreconditionError, match="already succeeded"):
        client.cancel_job(job_id)
    with pytest.raises(PreconditionError, match="only interrupted, failed or cancelled jobs can be resumed"):
        client.resume_job(job_id)


# -- cancel, queue, graceful stop ---------------------------------------------------------------


def test_cancel_running_and_queued_jobs_and_stop_the_service(tmp_path, tiny_llama_dir, train_env):
    train_env.start_worker("w1")  # one worker: one job at a time, the next waits in the queue
    service, address = start_trainer(tmp_path, train_env)
    long_job = write_job(tmp_path / "long", tiny_llama_dir, **LONG).read_text()
    base = str(tmp_path / "long")
    client = TrainerClient(address, cancel_grace=5)
    try:
        a = client.start_job(long_job, base_dir=base)
        b = client.start_job(long_job, base_dir=base)
        running = wait_step(client, a.id)
        assert client.get_job(b.id).state is JobState.QUEUED
        pid = running.attempts[0].pid

        cancelled_b = client.cancel_job(b.id)
        assert cancelled_b.state is JobState.CANCELLED and cancelled_b.attempts == [] and "queued" in cancelled_b.error
        cancelled_a = client.cancel_job(a.id)  # the worker sees the request in the record and stops the process
        assert cancelled_a.state is JobState.CANCELLED and cancelled_a.attempts[0].outcome == "cancelled"
        assert cancelled_a.attempts[0].exit_code == -signal.SIGTERM  # it ended on the SIGTERM, no SIGKILL needed
        assert not pid_alive(pid)
        with pytest.raises(PreconditionError, match="already cancelled"):
            client.cancel_job(a.id)

        # b's message, delivered now, finds b cancelled and runs nothing; a third job takes the worker
        c = client.start_job(long_job, base_dir=base, restart=True)
        pid = wait_step(client, c.id).attempts[0].pid
    finally:
        client.close()
        service.stop()
    # The job is the worker's, not the service's: it trains on with no service at all.
    assert pid_alive(pid)

    # A new service on the same database reports it, and can cancel it.
    service, address = start_trainer(tmp_path, train_env)
    try:
        with TrainerClient(address) as client:
            assert client.get_job(c.id).state is JobState.RUNNING
            assert client.get_job(b.id).attempts == []  # b never ran
            assert [j.id for j in client.list_jobs(states=[JobState.CANCELLED])] == [b.id, a.id]
            assert client.cancel_job(c.id).state is JobState.CANCELLED
        assert not pid_alive(pid)
    finally:
        service.stop()


# -- a worker killed mid-job ---------------------------------------------------------------------


def test_a_sigkilled_worker_s_job_resumes_on_a_second_worker_and_ends_like_an_uninterrupted_run(tmp_path, tiny_llama_dir):
    """Two workers consume `train`; the one training the job is SIGKILLed
    (parent and pool process, no chance to ack) once a state of stage 2 is
    saved. Its training process ends with it (PR_SET_PDEATHSIG); Redis hands
    the unacknowledged job back after the visibility timeout, the other worker
    finds the lease expired, and resumes from the saved state; the final
    checkpoint is byte-identical to an uninterrupted run's."""
    over = {"baselines": {"train": False}, "max_steps": 500, "mixture": {"stage1_steps": 4, "stage2_steps": 100},
                "training": {"lr": 1e-3, "micro_batch": 2, "grad_accum": 2, "warmup_ratio": 0.1, "state_every_steps": 5, "length_group_steps": 4}}
    job = write_job(tmp_path / "job", tiny_llama_dir, **over)
    # A visibility timeout shorter than the job: the healthy job's message comes back
    # too, and the lease, not the broker, keeps it from training twice.
    env = make_train_env(tmp_path / "train", trainer_root=tmp_path, visibility_timeout=8, lease_seconds=4)
    service = None
    try:
        workers = {w.name: w for w in (env.start_worker("w1", ready=False), env.start_worker("w2", ready=False))}
        for w in workers.values():
            w.wait_ready()
        service, address = start_trainer(tmp_path, env)
        store = service.core.store
        with TrainerClient(address) as client:
            job_id = client.start_job(job.read_text(), base_dir=str(job.parent)).id

            def saved_mid_stage2() -> int | None:
                saved = [e["step"] for _, e in store.events(job_id) if e and e.get("event") == "state_saved" and e.get("stage") == "stage2"]
                return saved[-1] if saved and saved[-1] >= 10 else None

            killed_at = wait_for(saved_mid_stage2, "a saved state in stage 2", timeout=300)
            first = store.get(job_id).attempts[-1]
            doomed = workers[first.worker.split("@")[0]]
            doomed.kill(signal.SIGKILL)
            doomed.proc.wait(10)
            assert not any(e and e.get("event") == "result" for _, e in store.events(job_id)), "the job ended before its worker was killed"
            wait_for(lambda: not pid_alive(first.pid), "the training process to end with its worker", timeout=30)

            watched = [v for kind, v in client.watch_job(job_id) if kind == "event"]  # follows the resume to its end
            done = client.get_job(job_id)
        survivor = next(w for w in workers.values() if w is not doomed)
        assert done.state is JobState.SUCCEEDED, done.error
        ours = store.get(job_id).attempts
        assert [a.action for a in ours] == ["start", "resume"] and [a.outcome for a in ours] == ["interrupted", "succeeded"]
        assert ours[0].worker.startswith(f"{doomed.name}@") and ours[1].worker.startswith(f"{survivor.name}@")
        lost = [e for e in watched if e["event"] == "attempt_lost"]
        assert len(lost) == 1 and lost[0]["worker"] == ours[0].worker and "stopped heartbeating" in lost[0]["error"]
        resumes = [e for e in watched if e["event"] == "resumed"]
        assert resumes and resumes[0]["stage"] == "stage2" and resumes[0]["step"] >= killed_at
        assert sum(e["event"] == "job_started" for e in watched) == 2  # two processes, never at once: one per attempt
    finally:
        if service is not None:
            service.stop()
        env.cleanup()

    reference = run_job(parse_job(toy_job(tmp_path / "clean", base_model=str(tiny_llama_dir), **over),
                                  write_job(tmp_path / "clean", tiny_llama_dir, **over).parent))
    ours_m, theirs = read_manifest(done.result["checkpoints"][0]), read_manifest(reference.checkpoints[0])
    assert ours_m.id == theirs.id
    assert ours_m.files["model.safetensors"] == theirs.files["model.safetensors"]  # bit for bit
    assert [r["multi_task"] for r in done.result["rows"]] == [r["multi_task"] for r in reference.to_dict()["rows"]]


# -- errors ----------------------------------------------------------------------------------


def test_errors_have_their_status_codes_and_name_the_field(tmp_path, tiny_llama_dir, capsys, train_env):
    service, address = start_trainer(tmp_path, train_env)  # no worker: nothing here may be queued
    client = TrainerClient(address)
    try:
        _errors(tmp_path, tiny_llama_dir, capsys, address, client)
    finally:
        client.close()
        service.stop()


def _errors(tmp_path: Path, tiny_llama_dir: Path, capsys: Any, address: str, client: TrainerClient) -> None:
    job = write_job(tmp_path / "bad", tiny_llama_dir)
    base = str(job.parent)
    good = yaml.safe_load(job.read_text())

    def refused(spec: Any, **kw: Any) -> str:
        text = spec if isinstance(spec, str) else yaml.safe_dump(spec)
        with pytest.raises(ValidationError) as info:
            client.start_job(text, **{"base_dir": base, **kw})
        assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        return info.value.details  # type: ignore[attr-defined]

    assert refused({**good, "training": {"lrate": 1}}).startswith("training.lrate: unknown key")
    assert refused({**good, "max_steps": 0}).startswith("max_steps: ")
    assert refused({**good, "tasks": ["sentiment", "nope"]}).startswith("tasks[1]: is not a task of catalogue 'toy'")
    assert refused({**good, "data_dir": "missing"}).startswith("data_dir: is not a folder")
    assert refused("name: [unclosed").startswith("spec_yaml: is not valid YAML")
    assert refused("  ").startswith("spec_yaml: is empty")
    assert refused(good, base_dir="relative/dir").startswith("base_dir: must be an absolute path")
    # confinement: the job's folder and outputs inside the trainer root, the base model by id or in the checkpoint root
    outside = write_job(tmp_path.parent / f"outside-{tmp_path.name}", tiny_llama_dir)
    # Every refusal quotes the caller's own string and names no server path (not the root).
    inside_root = "must be inside the trainer root (setting trainer.root)"
    assert refused(yaml.safe_load(outside.read_text()), base_dir=str(outside.parent)) == f"base_dir: {inside_root} (got '{outside.parent}')"
    for runs_dir in ("/tmp/elsewhere-runs", "../../escape"):  # the job is in <root>/bad: ../.. leaves the root
        assert refused({**good, "output": {"runs_dir": runs_dir}}) == f"output.runs_dir: {inside_root} (got '{runs_dir}')"
    assert refused({**good, "output": {"runs_dir": "runs", "checkpoints_dir": "/var/tmp/ckpts"}}) == (
        f"output.checkpoints_dir: {inside_root} (got '/var/tmp/ckpts')"
    )
    assert refused({**good, "data_dir": "/etc"}) == f"data_dir: {inside_root} (got '/etc')"  # nothing is read outside the root
    assert refused({**good, "catalogue": "/etc/passwd.yaml"}) == f"catalogue: {inside_root} (got '/etc/passwd.yaml')"
    assert refused({**good, "output": {"runs_dir": "~/runs"}}) == (
        "output.runs_dir: must be an absolute path (~ is not expanded on the server) (got '~/runs')"
    )
    assert refused({**good, "base_model": str(outside.parent)}) == (
        f"base_model: must be inside the checkpoint root (setting checkpoints_dir), or be a checkpoint id (got '{outside.parent}')"
    )
    # Outside the root, a folder that exists and one that does not get the same answer.
    assert refused(good, base_dir="/no/such/folder") == f"base_dir: {inside_root} (got '/no/such/folder')"
    assert refused(good, base_dir="/") == f"base_dir: {inside_root} (got '/')"
    assert refused(good, base_dir="/a\x00b").startswith("base_dir: must not contain a NUL character")

    for call in (client.get_job, client.cancel_job, client.resume_job, lambda j: list(client.watch_job(j))):
        with pytest.raises(NotFoundError) as info:
            call("toy-20260101-000000-abcd")
        assert info.value.code is grpc.StatusCode.NOT_FOUND and "unknown job 'toy-20260101-000000-abcd'" in info.value.details  # type: ignore[attr-defined]
    with pytest.raises(NotFoundError):
        client.get_job("../../etc")

    with pytest.raises(PreconditionError) as info:
        client.start_job(job.read_text(), base_dir=base, promote=True, registry_address="127.0.0.1:1")
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION and "registry at 127.0.0.1:1 is not reachable" in info.value.details  # type: ignore[attr-defined]
    assert client.list_jobs() == []  # nothing was queued

    code, _, err = run(capsys, "train", "status", "toy-20260101-000000-abcd", "--server", address)
    assert code == 2 and err.count("\n") == 1 and "NOT_FOUND: unknown job 'toy-20260101-000000-abcd'" in err
    code, _, err = run(capsys, "train", "submit", "-f", str(tmp_path / "missing.yaml"), "--server", address)
    assert code == 2 and "cannot read file" in err


# -- failures ----------------------------------------------------------------------------------


def test_a_job_failing_in_its_process_reports_its_error(trainer, tmp_path, tiny_llama_dir):
    _, _, client = trainer
    job = write_job(tmp_path / "broken", tiny_llama_dir)
    train = tmp_path / "broken" / "data" / "topic" / "train.jsonl"
    lines = train.read_text().splitlines()
    lines[2] = json.dumps({"id": "bad", "text": "The bed was fine.", "label": "weather"})
    train.write_text("\n".join(lines) + "\n")
    submitted = client.start_job(job.read_text(), base_dir=str(job.parent))  # the spec itself is fine
    for _ in client.watch_job(submitted.id):
        pass
    failed = client.get_job(submitted.id)
    assert failed.state is JobState.FAILED and failed.attempts[0].exit_code == 2
    assert failed.error.startswith("data: 1 bad line(s)") and f"{train}:3" in failed.error and "weather" in failed.error


def test_start_job_with_the_queue_unreachable_is_unavailable_and_records_nothing(tmp_path, tiny_llama_dir):
    from services.trainer.server import create_server

    settings = make_settings(tmp_path, **{"batch.broker_url": "redis://:secret-pw@127.0.0.1:1/0", "trainer.root": str(tmp_path),
                                          "trainer.database_url": f"sqlite:///{tmp_path / 'trainer.db'}"})
    service, port = create_server("127.0.0.1:0", settings)
    service.start()
    try:
        with TrainerClient(f"127.0.0.1:{port}") as client:
            job = write_job(tmp_path / "job", tiny_llama_dir)
            with pytest.raises(UnavailableError) as info:
                client.start_job(job.read_text(), base_dir=str(job.parent))
            assert info.value.code is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            details = info.value.details  # type: ignore[attr-defined]
            assert "the train queue's broker redis://:**@127.0.0.1:1/0 is not reachable" in details and "the job was not queued" in details
            assert "secret-pw" not in details
            assert client.list_jobs() == []
    finally:
        service.stop()
