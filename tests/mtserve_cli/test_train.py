"""`mtserve train show`'s job view: each attempt with the train worker that ran it."""

from __future__ import annotations

from mtserve_cli.train import _print_job
from services.trainer.records import Attempt, JobInfo, JobState, Options, Progress


def test_show_names_the_worker_of_each_attempt(capsys):
    job = JobInfo(
        id="j1", name="mix", state=JobState.RUNNING, created_at="2026-12-03T10:00:00Z", started_at="2026-12-03T10:00:01Z",
        finished_at="", options=Options(), spec_yaml="", progress=Progress(), error="",
        attempts=[Attempt(action="start", pid=11, started_at="2026-12-03T10:00:01Z", ended_at="2026-12-03T10:05:00Z",
                          exit_code=-9, outcome="interrupted", worker="w1@a/1"),
                  Attempt(action="resume", pid=12, started_at="2026-12-03T10:06:00Z")],  # a worker too old to say
        result=None, folder="/runs/j1",
    )
    _print_job(job)
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("attempt")]
    assert lines == ["attempt 1: start on w1@a/1, pid 11, started 2026-12-03T10:00:01, ended 2026-12-03T10:05:00 (interrupted, exit -9)",
                     "attempt 2: resume, pid 12, started 2026-12-03T10:06:00, running"]
