"""The trainer's gRPC server: a thin servicer over JobManager. Each method
turns the request into plain values, calls the manager, and turns the result
back (services/trainer/convert.py); domain errors become status codes in the
shared interceptor (services/common/server.py): a spec error is
INVALID_ARGUMENT naming the field, an unknown job NOT_FOUND, a job in the
wrong state or an unreachable registry FAILED_PRECONDITION."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from mtserve.config import Settings, load_settings
from mtserve.errors import PreconditionError, UnavailableError
from mtserve.metrics_http import metrics_endpoint
from mtserve_api.v1 import trainer_pb2 as tpb
from mtserve_api.v1 import trainer_pb2_grpc as tpb_grpc
from services.common.server import Service, server_tls, token_store
from services.trainer import convert
from services.trainer.jobs import JobStore
from services.trainer.manager import JobManager

log = logging.getLogger(__name__)

SERVICE_NAME = tpb.DESCRIPTOR.services_by_name["Trainer"].full_name
REGISTRY_CHECK_SECONDS = 10.0


class TrainerServicer(tpb_grpc.TrainerServicer):
    def __init__(self, manager: JobManager):
        self.manager = manager

    def StartJob(self, request: tpb.StartJobRequest, context: Any) -> tpb.Job:
        info = self.manager.submit(
            request.spec_yaml, base_dir=request.base_dir, promote=request.promote, register=request.register,
            registry_address=request.registry_address, resume=request.resume, restart=request.restart,
        )
        return convert.job_to_pb(info)

    def GetJob(self, request: tpb.GetJobRequest, context: Any) -> tpb.Job:
        return convert.job_to_pb(self.manager.get(request.id))

    def ListJobs(self, request: tpb.ListJobsRequest, context: Any) -> tpb.ListJobsResponse:
        states = [s for i, n in enumerate(request.states) if (s := convert.state_from_pb(n, f"states[{i}]")) is not None]
        jobs = self.manager.list(states=states, name=request.name, limit=request.limit)
        return tpb.ListJobsResponse(jobs=[convert.job_to_pb(j) for j in jobs])

    def CancelJob(self, request: tpb.CancelJobRequest, context: Any) -> tpb.Job:
        return convert.job_to_pb(self.manager.cancel(request.id))

    def ResumeJob(self, request: tpb.ResumeJobRequest, context: Any) -> tpb.Job:
        return convert.job_to_pb(self.manager.resume(request.id))

    def WatchJob(self, request: tpb.WatchJobRequest, context: Any) -> Iterator[tpb.WatchJobResponse]:
        for kind, value in self.manager.watch(request.id, request.from_seq, is_active=context.is_active):
            if kind == "job":
                yield tpb.WatchJobResponse(job=convert.job_to_pb(value))
            else:
                seq, event = value
                yield tpb.WatchJobResponse(event=convert.event_to_pb(seq, event))


def registry_check(timeout: float = REGISTRY_CHECK_SECONDS, settings: Any = None) -> Any:
    """A job asked to promote must not start when the registry does not
    answer: hours of training would end in a failed promotion."""

    def check(address: str) -> None:
        from mtserve_api.registry import RegistryClient

        try:
            with RegistryClient(address, timeout=timeout, settings=settings) as client:
                client.get_routes()
        except UnavailableError as exc:
            raise PreconditionError(
                f"promote/register: the registry at {address} is not reachable ({exc}); start it or give another registry_address. "
                "The job was not started."
            ) from None

    return check


class TrainerService(Service):
    """The server with its job manager."""

    manager: JobManager


def create_server(
    address: str,
    settings: Settings | None = None,
    *,
    jobs_dir: str | None = None,
    registry_address: str | None = None,
    child_env: Mapping[str, str] | None = None,
) -> tuple[TrainerService, int]:
    """A trainer server bound to `address` (port 0 picks a free port), not yet
    started. Its job manager owns the jobs folder from here on (a second
    service on the same folder is refused): jobs found running are followed
    again or marked interrupted. Starting the server starts the launcher
    thread; stopping it stops the running jobs (they become INTERRUPTED,
    resumable). Returns the server and the bound port."""
    settings = settings or load_settings()
    t = settings.trainer
    manager = JobManager(
        JobStore(jobs_dir or settings.trainer_jobs_dir),
        registry_address=registry_address or settings.trainer_registry_address,
        registry_check=registry_check(settings=settings),
        max_running=t.max_running_jobs,
        cancel_grace=t.cancel_grace_seconds,
        poll_seconds=t.poll_seconds,
        child_env=child_env,
        root=settings.trainer_root,
        checkpoints_root=settings.checkpoints_root,
    )
    tokens = token_store(settings, "trainer", address)
    service = TrainerService(
        [SERVICE_NAME],
        service="trainer",
        max_workers=t.max_workers,
        max_streams=t.max_streams,
        max_message_bytes=t.max_message_bytes,
        grace_seconds=t.shutdown_grace_seconds,
        tokens=tokens,
        metrics=metrics_endpoint(settings, "trainer", t.metrics_address),
        tls=server_tls(settings, "trainer", address),
    )
    tpb_grpc.add_TrainerServicer_to_server(TrainerServicer(manager), service.server)
    service.manager = manager
    manager.open()
    try:
        port = service.bind(address)
    except Exception:
        manager.store.unlock()
        raise
    service.on_start(manager.start)
    service.on_start(lambda: service.set_serving(True))
    service.on_drain(manager.drain)
    service.on_stopped(manager.close)
    return service, port
