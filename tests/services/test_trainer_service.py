"""The trainer service over real sockets: jobs as subprocesses on tiny
models. Submit, watch to completion (replayed, then live), get and list,
through the CLI; cancel a running and a queued job; stop the service while a
job runs (in process), and SIGKILL the service process while a job trains,
restart it, find the job interrupted, resume it, and get exactly the result
of an uninterrupted run; every error with its status code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from mtserve.checkpoints import read_manifest
from mtserve.config import load_settings
from mtserve.errors import NotFoundError, PreconditionError, ValidationError
from mtserve_api.client import connect
from mtserve_api.v1 import trainer_pb2 as tpb
from mtserve_api.v1 import trainer_pb2_grpc as tpb_grpc
from mtserve_cli import main
from services.trainer.client import TrainerClient
from services.trainer.jobs import JobState, JobStore
from services.trainer.manager import pid_alive
from trainer.job import parse_job
from trainer.pipeline import run_job
from trainer.runs import read_events
from trainer.toy import toy_job, write_toy_data

from .conftest import make_settings, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
# Long enough to be caught mid-stage (a tiny-model step takes a few hundredths of a second).
LONG = {"baselines": {"train": False}, "max_steps": 5000, "mixture": {"stage1_steps": 4, "stage2_steps": 4000},
            "training": {"lr": 1e-3, "micro_batch": 2, "grad_accum": 2, "warmup_ratio": 0.1, "state_every_steps": 50}}


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


def trainer_settings(tmp_path: Path, **over: Any) -> Any:
    return make_settings(tmp_path, **{"trainer.jobs_dir": str(tmp_path / "jobs"), "trainer.poll_seconds": 0.05,
                                      "trainer.cancel_grace_seconds": 5, "trainer.root": str(tmp_path), **over})


def start_trainer(tmp_path: Path, **over: Any) -> tuple[Any, str]:
    from services.trainer.server import create_server

    service, port = create_server("127.0.0.1:0", trainer_settings(tmp_path, **over), child_env=CHILD_ENV)
    service.start()
    return service, f"127.0.0.1:{port}"


@pytest.fixture
def trainer(tmp_path):
    service, address = start_trainer(tmp_path)
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


def test_cancel_running_and_queued_jobs_and_stop_the_service(tmp_path, tiny_llama_dir):
    service, address = start_trainer(tmp_path)
    long_job = write_job(tmp_path / "long", tiny_llama_dir, **LONG).read_text()
    base = str(tmp_path / "long")
    client = TrainerClient(address, cancel_grace=5)
    try:
        a = client.start_job(long_job, base_dir=base)
        b = client.start_job(long_job, base_dir=base)  # max_running_jobs 1: waits
        running = wait_step(client, a.id)
        assert client.get_job(b.id).state is JobState.QUEUED
        pid = running.attempts[0].pid

        cancelled_b = client.cancel_job(b.id)
        assert cancelled_b.state is JobState.CANCELLED and cancelled_b.attempts == [] and "queued" in cancelled_b.error
        cancelled_a = client.cancel_job(a.id)
        assert cancelled_a.state is JobState.CANCELLED and cancelled_a.attempts[0].outcome == "cancelled"
        assert cancelled_a.attempts[0].exit_code == -signal.SIGTERM  # it ended on the SIGTERM, no SIGKILL needed
        assert not pid_alive(pid, None)
        with pytest.raises(PreconditionError, match="already cancelled"):
            client.cancel_job(a.id)

        # a third job runs (the slot is free again); stopping the service stops it: interrupted, resumable
        c = client.start_job(long_job, base_dir=base, restart=True)
        pid = wait_step(client, c.id).attempts[0].pid
    finally:
        client.close()
        service.stop()
    assert not pid_alive(pid, None)
    record = JobStore(tmp_path / "jobs").load(c.id)
    assert record.state is JobState.INTERRUPTED and "the trainer service stopped" in record.error

    # a new service over the same folder reports it so; only one service may own the folder
    service, address = start_trainer(tmp_path)
    try:
        from services.trainer.server import create_server

        with pytest.raises(PreconditionError, match="another trainer service"):
            create_server("127.0.0.1:0", trainer_settings(tmp_path))
        with TrainerClient(address) as client:
            assert client.get_job(c.id).state is JobState.INTERRUPTED
            assert [j.id for j in client.list_jobs(states=[JobState.CANCELLED])] == [b.id, a.id]
            assert client.cancel_job(c.id).state is JobState.CANCELLED
    finally:
        service.stop()


# -- a real restart -------------------------------------------------------------------------


class ServiceProcess:
    """`mtserve serve trainer` as a child process; the port is read from its first line."""

    def __init__(self, jobs_dir: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtserve_cli", "serve", "trainer", "--address", "127.0.0.1:0", "--jobs-dir", str(jobs_dir)],
            env={**env, "MTSERVE_TRAINER__METRICS_ADDRESS": "127.0.0.1:0"}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if "listening on" not in line:
            self.proc.kill()
            raise AssertionError(f"`mtserve serve trainer` did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.address = line.split("listening on ")[1].strip()
        # Its own home: the local admin token and the local CA it made there on start.
        self.settings = load_settings(env={"MTSERVE_HOME": env["MTSERVE_HOME"]})


def test_a_killed_service_leaves_the_job_interrupted_and_resume_finishes_it_like_an_uninterrupted_run(tmp_path, tiny_llama_dir):
    over = {"baselines": {"train": False}, "max_steps": 500, "mixture": {"stage1_steps": 4, "stage2_steps": 100},
                "training": {"lr": 1e-3, "micro_batch": 2, "grad_accum": 2, "warmup_ratio": 0.1, "state_every_steps": 5, "length_group_steps": 4}}
    job = write_job(tmp_path / "job", tiny_llama_dir, **over)
    env = {**os.environ, **CHILD_ENV, "MTSERVE_HOME": str(tmp_path / "home"), "MTSERVE_TRAINER__POLL_SECONDS": "0.05",
           "MTSERVE_TRAINER__ROOT": str(tmp_path), "MTSERVE_CHECKPOINTS_DIR": str(Path(tiny_llama_dir).parent)}
    jobs_dir = tmp_path / "jobs"
    first = ServiceProcess(jobs_dir, env)
    try:
        with TrainerClient(first.address, settings=first.settings) as client:
            job_id = client.start_job(job.read_text(), base_dir=str(job.parent)).id
            events = jobs_dir / job_id / "events.jsonl"

            def saved_mid_stage2() -> int | None:
                saved = [e["step"] for e in read_events(events) if e.get("event") == "state_saved" and e.get("stage") == "stage2"]
                return saved[-1] if saved and saved[-1] >= 10 else None

            killed_at = wait_for(saved_mid_stage2, "a saved state in stage 2", timeout=240)
            pid = client.get_job(job_id).attempts[0].pid
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    assert not any(e.get("event") == "result" for e in read_events(events)), "the job ended before the service was killed"
    # the job's process dies with the service that started it (--exit-with-parent)
    wait_for(lambda: not pid_alive(pid, None), "the job process to end with its service")

    second = ServiceProcess(jobs_dir, env)
    try:
        with TrainerClient(second.address, settings=second.settings) as client:
            interrupted = client.get_job(job_id)
            assert interrupted.state is JobState.INTERRUPTED and "service was stopped or killed" in interrupted.error
            assert interrupted.attempts[0].outcome == "interrupted"
            resumed = client.resume_job(job_id)
            assert resumed.state is JobState.QUEUED
            watched = [v for kind, v in client.watch_job(job_id) if kind == "event"]
            done = client.get_job(job_id)
    finally:
        second.proc.send_signal(signal.SIGTERM)
        _, err = second.proc.communicate(timeout=60)
    assert second.proc.returncode == 0 and "trainer stopped" in err
    assert done.state is JobState.SUCCEEDED, done.error
    assert [a.action for a in done.attempts] == ["start", "resume"] and [a.outcome for a in done.attempts] == ["interrupted", "succeeded"]
    resumes = [e for e in watched if e["event"] == "resumed"]
    assert resumes and resumes[0]["stage"] == "stage2" and resumes[0]["step"] >= killed_at

    reference = run_job(parse_job(toy_job(tmp_path / "clean", base_model=str(tiny_llama_dir), **over),
                                  write_job(tmp_path / "clean", tiny_llama_dir, **over).parent))
    ours, theirs = read_manifest(done.result["checkpoints"][0]), read_manifest(reference.checkpoints[0])
    assert ours.id == theirs.id
    assert ours.files["model.safetensors"] == theirs.files["model.safetensors"]  # bit for bit
    assert [r["multi_task"] for r in done.result["rows"]] == [r["multi_task"] for r in reference.to_dict()["rows"]]


# -- errors ----------------------------------------------------------------------------------


def test_errors_have_their_status_codes_and_name_the_field(trainer, tmp_path, tiny_llama_dir, capsys):
    _, address, client = trainer
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


# -- restart recovery and failures, without gRPC -------------------------------------------------


def test_restart_recovery_follows_live_processes_and_judges_dead_ones(tmp_path):
    """What a new service makes of jobs its records say are running: a live
    process (same pid and start time) is followed to its end; a gone one is
    judged from its log: a result means it succeeded, none that it was interrupted."""
    from services.trainer.jobs import Attempt, JobRecord, Options, new_job_id, utcnow
    from services.trainer.manager import JobManager, proc_start_ticks

    store = JobStore(tmp_path / "jobs")

    def running(name: str, pid: int, start: int | None, events: list[dict]) -> str:
        record = JobRecord(id=new_job_id(name), name=name, state=JobState.RUNNING, created_at=utcnow(), options=Options(base_dir=str(tmp_path)))
        store.create(record, f"name: {name}\n")
        for event in events:
            store.append_event(record.id, event)
        record.attempts = [Attempt("start", pid, utcnow(), events_offset=0, proc_start=start)]
        store.save(record)
        return record.id

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    finished = running("finished", gone.pid, None, [{"event": "job_started"}, {"event": "result", "job": "finished", "rows": []}])
    cut = running("cut", gone.pid, None, [{"event": "job_started"}, {"event": "step", "stage": "stage2", "step": 3, "steps": 9, "loss": 1.0}])
    live_id = running("live", 0, None, [])
    with open(store.events_path(live_id), "ab") as out:
        live = subprocess.Popen([sys.executable, "-c", "import json, time; time.sleep(1.5); print(json.dumps({'event': 'result', 'job': 'live', 'rows': []}))"],
                                stdout=out, start_new_session=True)
    record = store.load(live_id)
    record.attempts[0].pid, record.attempts[0].proc_start = live.pid, proc_start_ticks(live.pid)
    store.save(record)

    manager = JobManager(store, registry_address="", poll_seconds=0.05).start()
    try:
        assert manager.get(finished).state is JobState.SUCCEEDED and manager.get(finished).result == {"job": "finished", "rows": []}
        interrupted = manager.get(cut)
        assert interrupted.state is JobState.INTERRUPTED and "service was stopped or killed" in interrupted.error
        assert interrupted.progress.stage == "stage2" and interrupted.progress.step == 3
        assert manager.get(live_id).state is JobState.RUNNING  # followed again, not declared dead
        live.wait()
        wait_for(lambda: manager.get(live_id).state is JobState.SUCCEEDED, "the adopted job to end")
        assert manager.get(live_id).attempts[0].exit_code is None  # not our child: its code is unknown
    finally:
        manager.close()


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
