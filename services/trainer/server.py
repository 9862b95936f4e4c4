"""The trainer's gRPC server: a thin servicer over TrainerCore
(services/trainer/service.py). Each method turns the request into plain
values, calls the core, and turns the result back (services/trainer/convert.py);
domain errors become status codes in the shared interceptor
(services/common/server.py): a spec error is INVALID_ARGUMENT naming the
field, an unknown job NOT_FOUND, a job in the wrong state or an unreachable
registry FAILED_PRECONDITION, an unreachable train queue UNAVAILABLE.

Jobs run on train workers (`mtserve train worker`, Celery queue `train`),
not here: the server keeps no process and no state of its own beyond the
database, so stopping or restarting it leaves training alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from mtserve.auth import Role, TokenStore
from mtserve.config import Settings, load_settings
from mtserve.errors import PreconditionError, UnavailableError
from mtserve.metrics_http import metrics_endpoint
from mtserve_api.v1 import trainer_pb2 as tpb
from mtserve_api.v1 import trainer_pb2_grpc as tpb_grpc
from services.common.server import Service, current_caller, server_tls, token_store
from services.trainer import convert
from services.trainer.service import Enqueue, TrainerCore
from services.trainer.store import JobStore

log = logging.getLogger(__name__)

SERVICE_NAME = tpb.DESCRIPTOR.services_by_name["Trainer"].full_name
REGISTRY_CHECK_SECONDS = 10.0


class TrainerServicer(tpb_grpc.TrainerServicer):
    def __init__(self, core: TrainerCore, tokens: TokenStore | None):
        self.core = core
        self.tokens = tokens

    def _requester(self) -> dict[str, str]:
        """Who calls, and the role the interceptor let through: recorded with
        the job, and checked again by the train worker before it runs it."""
        name = current_caller()
        if self.tokens is None:  # auth off (loopback only): every caller may do everything
            return {"requested_by": name or "(auth off)", "requested_role": Role.ADMIN.label}
        token = next((t for t in self.tokens.tokens() if t.name == name), None)
        if token is None:
            raise PreconditionError(f"the token {name!r} was revoked during the call; nothing was queued")
        return {"requested_by": token.name, "requested_role": token.role.label}

    def StartJob(self, request: tpb.StartJobRequest, context: Any) -> tpb.Job:
        info = self.core.submit(
            request.spec_yaml, base_dir=request.base_dir, promote=request.promote, register=request.register,
            registry_address=request.registry_address, resume=request.resume, restart=request.restart, **self._requester(),
        )
        return convert.job_to_pb(info)

    def GetJob(self, request: tpb.GetJobRequest, context: Any) -> tpb.Job:
        return convert.job_to_pb(self.core.get(request.id))

    def ListJobs(self, request: tpb.ListJobsRequest, context: Any) -> tpb.ListJobsResponse:
        states = [s for i, n in enumerate(request.states) if (s := convert.state_from_pb(n, f"states[{i}]")) is not None]
        jobs = self.core.list(states=states, name=request.name, limit=request.limit)
        return tpb.ListJobsResponse(jobs=[convert.job_to_pb(j) for j in jobs])

    def CancelJob(self, request: tpb.CancelJobRequest, context: Any) -> tpb.Job:
        return convert.job_to_pb(self.core.cancel(request.id))

    def ResumeJob(self, request: tpb.ResumeJobRequest, context: Any) -> tpb.Job:
        return convert.job_to_pb(self.core.resume(request.id, **self._requester()))

    def WatchJob(self, request: tpb.WatchJobRequest, context: Any) -> Iterator[tpb.WatchJobResponse]:
        for kind, value in self.core.watch(request.id, request.from_seq, is_active=context.is_active):
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


def celery_enqueue(settings: Settings) -> Enqueue:
    """Send a job id to the train queue (services/trainer/celery_app.py), by
    task name: the service imports no task code. Publishing retries briefly,
    then fails, so StartJob answers UNAVAILABLE rather than hanging on a dead broker."""
    from services.trainer.celery_app import QUEUE, RUN_JOB, make_app

    app = make_app(settings)

    def enqueue(job_id: str) -> None:
        from kombu.exceptions import OperationalError
        from kombu.utils.url import maybe_sanitize_url

        try:
            app.send_task(RUN_JOB, args=[job_id], queue=QUEUE, retry=True,
                          retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0})
        except (OperationalError, OSError) as exc:  # the URL without its password: this reaches the caller
            raise UnavailableError(f"the train queue's broker {maybe_sanitize_url(settings.batch.broker_url)} is not reachable ({exc})") from None

    return enqueue


class TrainerService(Service):
    """The server with its core."""

    core: TrainerCore


def create_server(
    address: str,
    settings: Settings | None = None,
    *,
    registry_address: str | None = None,
    enqueue: Enqueue | None = None,
) -> tuple[TrainerService, int]:
    """A trainer server bound to `address` (port 0 picks a free port), not yet
    started, over the job records at trainer.database_url (migrated here) and
    the train queue on batch.broker_url (`enqueue` replaces it). Returns the
    server and the bound port."""
    settings = settings or load_settings()
    t = settings.trainer
    store = JobStore(settings.trainer_database_url)
    core = TrainerCore(
        store,
        enqueue or celery_enqueue(settings),
        registry_address=registry_address or settings.trainer_registry_address,
        registry_check=registry_check(settings=settings),
        lease_seconds=t.lease_seconds,
        cancel_grace=t.cancel_grace_seconds,
        poll_seconds=t.poll_seconds,
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
    tpb_grpc.add_TrainerServicer_to_server(TrainerServicer(core, tokens), service.server)
    service.core = core
    try:
        port = service.bind(address)
    except Exception:
        store.close()
        raise
    service.on_start(lambda: service.set_serving(True))
    service.on_drain(core.drain)
    service.on_stopped(core.close)
    return service, port
