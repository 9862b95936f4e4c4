"""trainer.proto's service (its stubs' staleness is test_protos.py's check of
every generated file), and the trainer's conversions, job core, store and
train-worker side (runner, Celery app and task) import no grpc nor torch: a
train worker's parent process loads neither, and its training process is
where torch lives."""

from __future__ import annotations

import subprocess
import sys

from mtserve_api.gen_protos import ROOT


def test_the_trainer_service_has_its_six_rpcs_in_the_versioned_package():
    from mtserve_api.v1 import trainer_pb2

    service = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"]
    assert service.full_name == "mtserve.v1.Trainer"
    assert set(service.methods_by_name) == {"StartJob", "GetJob", "ListJobs", "CancelJob", "ResumeJob", "WatchJob"}


def test_the_trainer_core_and_conversions_import_no_grpc_nor_torch():
    code = (
        "import sys\n"
        "import services.trainer.records, services.trainer.store, services.trainer.service, services.trainer.runner\n"
        "import services.trainer.celery_app, services.trainer.tasks, services.trainer.convert, trainer.promote\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'torch'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_a_job_survives_the_wire_with_every_attempt_and_the_worker_that_ran_it():
    """A job resumed on another train worker shows both workers to a client
    over gRPC, as the store has them (the kill test's store-side check)."""
    from services.trainer.convert import job_from_pb, job_to_pb
    from services.trainer.records import Attempt, JobInfo, JobState, Options, Progress

    job = JobInfo(
        id="j1", name="mix", state=JobState.SUCCEEDED, created_at="2026-12-03T10:00:00Z", started_at="2026-12-03T10:00:01Z",
        finished_at="2026-12-03T10:09:00Z", options=Options(), spec_yaml="name: mix\n",
        progress=Progress(run="mt-1", stage="stage2", step=7, steps=10, dev={"a": 0.5}), error="",
        attempts=[Attempt(action="start", pid=11, started_at="t0", ended_at="t1", exit_code=-9, outcome="interrupted", worker="w1@a/1"),
                  Attempt(action="resume", pid=12, started_at="t2", ended_at="t3", exit_code=0, outcome="succeeded", worker="w2@b/2"),
                  Attempt(action="resume", pid=13, started_at="t4")],
        result=None, folder="/runs/j1",
    )
    back = job_from_pb(job_to_pb(job))
    assert back == job
    assert [a.worker for a in back.attempts] == ["w1@a/1", "w2@b/2", ""]
