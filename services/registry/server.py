"""The registry's gRPC server: a thin servicer over RegistryStore. Each method
turns the request into domain objects (mtserve_api/convert.py), calls the
store, and turns the result back; errors are raised as domain errors and
mapped to status codes by the interceptor (services/common/server.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from mtserve.config import Settings, load_settings
from mtserve.errors import ValidationError
from mtserve.metrics_http import metrics_endpoint
from mtserve.records import PolicyRecord, TaskStatus
from mtserve.tasks import Channel, Taxonomy, TruncationPolicy, check_name
from mtserve_api import convert
from mtserve_api.v1 import registry_pb2 as rpb
from mtserve_api.v1 import registry_pb2_grpc as rpb_grpc
from services.common.server import Service, current_caller, server_tls, token_store
from services.registry.store import RegistryStore
from services.registry.watch import watch_states

log = logging.getLogger(__name__)

SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["Registry"].full_name
MAX_AUDIT_ENTRIES = 1000


class RegistryServicer(rpb_grpc.RegistryServicer):
    def __init__(self, store: RegistryStore, *, watch_poll_seconds: float = 1.0):
        self.store = store
        self.watch_poll_seconds = watch_poll_seconds
        self.stopping = threading.Event()

    def stop_watches(self) -> None:
        self.stopping.set()
        with self.store.changed:  # wake every waiting Watch at once
            self.store.changed.notify_all()

    # -- tasks -----------------------------------------------------------------------
    def RegisterTask(self, request: rpb.RegisterTaskRequest, context: Any) -> rpb.RegisterTaskResponse:
        task = convert.task_from_pb(request.task, "task")
        return convert.registered_to_pb(self.store.register_task(task, actor=current_caller(), reason=request.reason))

    def ApplyCatalogue(self, request: rpb.ApplyCatalogueRequest, context: Any) -> rpb.ApplyCatalogueResponse:
        name = check_name(request.catalogue, "catalogue")
        tasks = [convert.task_from_pb(t, f"tasks[{i}]") for i, t in enumerate(request.tasks)]
        # No policy in the request means the built-in budgets, recorded as set by this catalogue.
        policy = convert.policy_from_pb(request.truncation, "truncation").policy if request.HasField("truncation") else None
        results, revision = self.store.apply_catalogue(
            tasks, PolicyRecord(policy or TruncationPolicy(), name), actor=current_caller(), reason=request.reason
        )
        return rpb.ApplyCatalogueResponse(results=[convert.registered_to_pb(r) for r in results], revision=revision)

    def GetTask(self, request: rpb.GetTaskRequest, context: Any) -> rpb.TaskRecord:
        version = request.version if request.HasField("version") else None
        return convert.task_record_to_pb(self.store.get_task(request.name, version))

    def ListTasks(self, request: rpb.ListTasksRequest, context: Any) -> rpb.ListTasksResponse:
        records = self.store.list_tasks(
            channel=convert.enum_from_pb(request.channel, Channel, "channel"),
            taxonomy=convert.enum_from_pb(request.taxonomy, Taxonomy, "taxonomy"),
            status=convert.enum_from_pb(request.status, TaskStatus, "status"),
        )
        return rpb.ListTasksResponse(tasks=[convert.task_record_to_pb(r) for r in records])

    def RetireTask(self, request: rpb.RetireTaskRequest, context: Any) -> rpb.TaskRecord:
        return convert.task_record_to_pb(self.store.retire_task(request.name, actor=current_caller(), reason=request.reason))

    def GetTruncationPolicy(self, request: rpb.GetTruncationPolicyRequest, context: Any) -> Any:
        return convert.policy_to_pb(self.store.policy())

    # -- checkpoints ------------------------------------------------------------------
    def RegisterCheckpoint(self, request: rpb.RegisterCheckpointRequest, context: Any) -> rpb.RegisterCheckpointResponse:
        record, changed = self.store.register_checkpoint(request.path, actor=current_caller(), reason=request.reason)
        return rpb.RegisterCheckpointResponse(checkpoint=convert.checkpoint_to_pb(record), changed=changed)

    def GetCheckpoint(self, request: rpb.GetCheckpointRequest, context: Any) -> rpb.Checkpoint:
        return convert.checkpoint_to_pb(self.store.get_checkpoint(request.id))

    def ListCheckpoints(self, request: rpb.ListCheckpointsRequest, context: Any) -> rpb.ListCheckpointsResponse:
        return rpb.ListCheckpointsResponse(checkpoints=[convert.checkpoint_to_pb(c) for c in self.store.list_checkpoints()])

    # -- routes ---------------------------------------------------------------------------
    def SetRoute(self, request: rpb.SetRouteRequest, context: Any) -> rpb.SetRoutesResponse:
        change = convert.route_change_from_pb(request.route, "route")
        updates, revision = self.store.set_routes([change], request.reason, where="route", actor=current_caller())
        return convert.route_updates_to_pb(updates, revision)

    def SetRoutes(self, request: rpb.SetRoutesRequest, context: Any) -> rpb.SetRoutesResponse:
        changes = [convert.route_change_from_pb(c, f"routes[{i}]") for i, c in enumerate(request.routes)]
        updates, revision = self.store.set_routes(changes, request.reason, actor=current_caller())
        return convert.route_updates_to_pb(updates, revision)

    def GetRoutes(self, request: rpb.GetRoutesRequest, context: Any) -> rpb.RouteTable:
        routes, revision = self.store.get_routes()
        return rpb.RouteTable(routes=[convert.route_to_pb(r) for r in routes], revision=revision)

    def RollbackRoute(self, request: rpb.RollbackRouteRequest, context: Any) -> rpb.Route:
        return convert.route_to_pb(self.store.rollback(request.task, actor=current_caller()))

    def GetRouteHistory(self, request: rpb.GetRouteHistoryRequest, context: Any) -> rpb.RouteHistory:
        return convert.history_to_pb(self.store.route_history(request.task))

    def GetAuditLog(self, request: rpb.GetAuditLogRequest, context: Any) -> rpb.AuditLog:
        if request.limit > MAX_AUDIT_ENTRIES:
            raise ValidationError("limit", f"must be at most {MAX_AUDIT_ENTRIES}", request.limit)
        return rpb.AuditLog(entries=[convert.audit_entry_to_pb(e) for e in self.store.audit_log(request.limit or 100)])

    # -- watch ---------------------------------------------------------------------------------
    def Watch(self, request: rpb.WatchRequest, context: Any) -> Iterator[rpb.WatchEvent]:
        log.info("watch opened by %s (%s)", request.client or "an unnamed client", context.peer())
        for snapshot, state in watch_states(self.store, self.stopping, poll_seconds=self.watch_poll_seconds, is_active=context.is_active):
            yield convert.watch_event_to_pb(state, snapshot=snapshot)
        log.info("watch closed by %s", request.client or context.peer())


class RegistryService(Service):
    """The server with its store."""

    store: RegistryStore


def create_server(
    address: str,
    settings: Settings | None = None,
    *,
    store: RegistryStore | None = None,
) -> tuple[RegistryService, int]:
    """A registry server bound to `address` (port 0 picks a free port), not
    yet started; its store is opened (and migrated) from the settings unless
    given. Returns the server and the bound port."""
    settings = settings or load_settings()
    own_store = store is None
    store = store or RegistryStore(settings.registry_database_url, checkpoint_roots=settings.registry_checkpoint_roots)
    tokens = token_store(settings, "registry", address)
    service = RegistryService(
        [SERVICE_NAME],
        service="registry",
        max_workers=settings.registry.max_workers,
        max_streams=settings.registry.max_streams,
        max_message_bytes=settings.registry.max_message_bytes,
        grace_seconds=settings.registry.shutdown_grace_seconds,
        tokens=tokens,
        metrics=metrics_endpoint(settings, "registry", settings.registry.metrics_address),
        tls=server_tls(settings, "registry", address),
    )
    service.store = store
    servicer = RegistryServicer(store, watch_poll_seconds=settings.registry.watch_poll_seconds)
    rpb_grpc.add_RegistryServicer_to_server(servicer, service.server)
    service.on_drain(servicer.stop_watches)
    if own_store:
        service.on_stopped(store.close)
    port = service.bind(address)
    # The registry is ready as soon as its database is migrated and open.
    service.set_serving(True)
    return service, port
