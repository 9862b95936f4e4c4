"""The trainer service's core: StartJob, GetJob, ListJobs, CancelJob,
ResumeJob and WatchJob over the job records in the SQL database
(services/trainer/store.py) and the train queue. Plain Python (no gRPC, no
Celery: the queue is a callable that sends a job id); the servicer
translates, this does. It runs nothing itself: train workers on the GPU
machines do (services/trainer/runner.py), so the service can be restarted,
or run as several replicas on one database, while jobs train.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mtserve.errors import PreconditionError, UnavailableError, ValidationError
from services.trainer.records import RESUMABLE, JobInfo, JobState, Options, check_job_id, load_spec, new_job_id
from services.trainer.store import JobStore

log = logging.getLogger(__name__)

RegistryCheck = Callable[[str], None]
Enqueue = Callable[[str], None]  # send the job id to the train queue; UnavailableError when it cannot


class TrainerCore:
    def __init__(
        self,
        store: JobStore,
        enqueue: Enqueue,
        *,
        registry_address: str,
        registry_check: RegistryCheck | None = None,
        lease_seconds: float = 60.0,
        cancel_grace: float = 10.0,
        poll_seconds: float = 0.2,
        default_base_dir: str | None = None,
        root: Path | None = None,
        checkpoints_root: Path | None = None,
    ):
        """`root` / `checkpoints_root`: what jobs may touch (trainer.job.confine);
        None accepts any job (the workers still confine with their own roots)."""
        self.store = store
        self.enqueue = enqueue
        self.registry_address = registry_address
        self.registry_check = registry_check
        self.lease_seconds = lease_seconds
        self.cancel_grace = cancel_grace
        self.poll_seconds = poll_seconds
        self.default_base_dir = default_base_dir or (str(root) if root else os.getcwd())
        self.root, self.checkpoints_root = root, checkpoints_root
        self.draining = threading.Event()  # watch streams end

    def drain(self) -> None:
        """End the watch streams (the server is shutting down). Jobs go on training."""
        self.draining.set()

    def close(self) -> None:
        self.drain()
        self.store.close()

    # -- the API ---------------------------------------------------------------------------
    def submit(
        self, spec_yaml: str, *, base_dir: str = "", promote: bool = False, register: bool = False, registry_address: str = "",
        resume: bool = False, restart: bool = False, requested_by: str = "", requested_role: str = "admin",
    ) -> JobInfo:
        if resume and restart:
            raise ValidationError("restart", "give resume or restart, not both", True)
        base = base_dir or self.default_base_dir
        root = self.root
        spec = load_spec(spec_yaml, base, root=root, checkpoints_root=(self.checkpoints_root or root) if root else None)
        promote = promote or spec.promote
        address = registry_address or self.registry_address
        if (promote or register) and self.registry_check is not None:
            self.registry_check(address)
        job_id = new_job_id(spec.name)
        options = Options(promote=promote, register=register or promote, registry_address=address if (promote or register) else "",
                          base_dir=base, resume=resume, restart=restart)
        self.store.create(job_id, spec.name, spec_yaml, options, requested_by=requested_by, requested_role=requested_role)
        try:
            self.enqueue(job_id)
        except UnavailableError as exc:
            self.store.remove(job_id)  # a record no message will ever run
            raise UnavailableError(f"{exc}; the job was not queued") from None
        return self.store.get(job_id)

    def get(self, job_id: str) -> JobInfo:
        return self.store.get(job_id)

    def list(self, *, states: Sequence[JobState] = (), name: str = "", limit: int = 0) -> list[JobInfo]:
        return self.store.list(states=states, name=name, limit=limit)

    def cancel(self, job_id: str) -> JobInfo:
        """Queued or interrupted: cancelled at once. Running: the worker is
        asked (through the record) and SIGTERMs the job's process group,
        SIGKILL after its grace; this returns once it has, or when the
        worker does not answer in time (the job then stays RUNNING with the
        cancel pending, and a worker that took it over honours it)."""
        if not self.store.cancel(job_id, lease_seconds=self.lease_seconds):
            # The worker reads the request at its next write of events or
            # heartbeat (lease / 3 at the latest), then allows the grace; the
            # client's deadline (TrainerClient.cancel_job) is longer.
            deadline = time.monotonic() + self.cancel_grace + self.lease_seconds / 3 + 10
            while self.store.state(job_id)[0] is JobState.RUNNING and time.monotonic() < deadline:
                time.sleep(min(self.poll_seconds, 0.5))
        return self.store.get(job_id)

    def resume(self, job_id: str, *, requested_by: str = "", requested_role: str = "admin") -> JobInfo:
        info = self.store.get(job_id)
        if info.state not in RESUMABLE:
            raise PreconditionError(f"job {job_id} is {info.state.value}; only interrupted, failed or cancelled jobs can be resumed")
        opts = info.options
        if (opts.promote or opts.register) and self.registry_check is not None:
            self.registry_check(opts.registry_address)
        self.store.queue_resume(job_id, requested_by=requested_by, requested_role=requested_role)
        try:
            self.enqueue(job_id)
        except UnavailableError as exc:
            self.store.cancel(job_id, lease_seconds=self.lease_seconds)
            raise UnavailableError(f"{exc}; the job was not queued (it is cancelled: resume it again)") from None
        return self.store.get(job_id)

    def watch(self, job_id: str, from_seq: int = 0, is_active: Callable[[], bool] = lambda: True) -> Iterator[tuple[str, Any]]:
        """("job", JobInfo) first and on every state change; ("event", (seq,
        event)) for each event from `from_seq`; ends once the job is not
        queued or running and its log is read to the end, or on drain. The
        database is polled every poll_seconds: the writers are on other machines."""
        check_job_id(job_id)
        info = self.store.get(job_id)
        yield "job", info
        seen = (info.state, len(info.attempts))
        next_seq = from_seq
        while True:
            # The state before the log: a final state's job_state event was
            # written in the same transaction, so this read of the log has it.
            state, attempts, _ = self.store.state(job_id)
            for seq, event in self.store.events(job_id, next_seq):
                next_seq = seq + 1
                if event is not None:
                    yield "event", (seq, event)
            if (state, attempts) != seen:
                # `seen` is what was read before the log, not the (maybe newer)
                # record sent: a job that ended meanwhile is sent once more,
                # after its last events, so the stream always ends on the job.
                seen = (state, attempts)
                yield "job", self.store.get(job_id)
            if not state.active:
                return
            if self.draining.wait(self.poll_seconds) or not is_active():
                return


__all__ = ["Enqueue", "TrainerCore"]
