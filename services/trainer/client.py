"""A trainer client returning domain objects (JobInfo, event dicts). Every
unary call has a deadline; UNAVAILABLE is retried by the channel's service
config except for StartJob and ResumeJob (not idempotent: a retry after a
lost answer would queue the job twice). A failed call raises a RemoteError
that is also the matching domain error (ValidationError, NotFoundError, ...).

    with TrainerClient("127.0.0.1:50053") as trainer:
        job = trainer.start_job(Path("job.yaml").read_text(), base_dir="/abs/folder", promote=True)
        for kind, value in trainer.watch_job(job.id):
            ...  # ("event", {...}) and ("job", JobInfo)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from mtserve_api.client import DEFAULT_MAX_MESSAGE_BYTES, ServiceClient, raise_remote
from mtserve_api.v1 import trainer_pb2 as tpb
from mtserve_api.v1 import trainer_pb2_grpc as tpb_grpc
from services.trainer import convert
from services.trainer.records import JobInfo, JobState

if TYPE_CHECKING:
    from mtserve.config import Settings

SERVICE = "mtserve.v1.Trainer"


class WatchStream:
    """WatchJob as ("job", JobInfo) and ("event", dict with `seq`) pairs;
    `cancel()` from another thread ends the iteration."""

    def __init__(self, call: Any, address: str):
        self._call, self._address = call, address

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        try:
            for message in self._call:
                if message.HasField("job"):
                    yield "job", convert.job_from_pb(message.job)
                else:
                    yield "event", convert.event_from_pb(message.event)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.CANCELLED:
                return
            raise_remote(exc, "trainer", self._address)

    def cancel(self) -> None:
        self._call.cancel()


class TrainerClient(ServiceClient):
    SERVICE, NAME = SERVICE, "trainer"
    RETRY = ("GetJob", "ListJobs", "WatchJob")  # reads only: a retried StartJob or ResumeJob could start a job twice
    KEEPALIVE = True  # WatchJob streams last as long as a training job

    def __init__(
        self, address: str, *, timeout: float = 30.0, cancel_grace: float = 10.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None, settings: Settings | None = None,
    ):
        super().__init__(address, timeout=timeout, max_message_bytes=max_message_bytes, token=token, settings=settings)
        self.cancel_grace = cancel_grace
        self.stub = tpb_grpc.TrainerStub(self.channel)

    def start_job(
        self, spec_yaml: str, *, base_dir: str = "", promote: bool = False, register: bool = False, registry_address: str = "",
        resume: bool = False, restart: bool = False,
    ) -> JobInfo:
        request = tpb.StartJobRequest(spec_yaml=spec_yaml, base_dir=base_dir, promote=promote, register=register,
                                      registry_address=registry_address, resume=resume, restart=restart)
        return convert.job_from_pb(self._call(self.stub.StartJob, request))

    def get_job(self, job_id: str) -> JobInfo:
        return convert.job_from_pb(self._call(self.stub.GetJob, tpb.GetJobRequest(id=job_id)))

    def list_jobs(self, *, states: Sequence[JobState] = (), name: str = "", limit: int = 0) -> list[JobInfo]:
        request = tpb.ListJobsRequest(states=[convert.state_to_pb(s) for s in states], name=name, limit=limit)
        return [convert.job_from_pb(j) for j in self._call(self.stub.ListJobs, request).jobs]

    def cancel_job(self, job_id: str) -> JobInfo:
        """Waits for the job's process to end: SIGTERM, SIGKILL after the
        service's grace period; the deadline allows for it."""
        response = self._call(self.stub.CancelJob, tpb.CancelJobRequest(id=job_id), self.timeout + 2 * self.cancel_grace + 30)
        return convert.job_from_pb(response)

    def resume_job(self, job_id: str) -> JobInfo:
        return convert.job_from_pb(self._call(self.stub.ResumeJob, tpb.ResumeJobRequest(id=job_id)))

    def watch_job(self, job_id: str, from_seq: int = 0) -> WatchStream:
        """An open-ended stream (no deadline: a job runs for hours); it ends
        when the job stops running. Keepalive detects a vanished service."""
        return WatchStream(self.stub.WatchJob(tpb.WatchJobRequest(id=job_id, from_seq=from_seq)), self.address)
