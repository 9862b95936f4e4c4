"""A registry client returning domain objects. Every call carries a deadline;
UNAVAILABLE is retried by the channel (service config), except for
RollbackRoute, which is not idempotent. A failed call raises a RemoteError
that is also the matching domain error (NotFoundError, ValidationError, ...).

    with RegistryClient("127.0.0.1:50051") as registry:
        registry.apply_catalogue(load_catalogue("hotel.yaml"))
        registry.set_routes([RouteChange("rc-a", "tiny-llama")], reason="manual")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from mtserve.records import (
    AuditEntry,
    CheckpointRecord,
    PolicyRecord,
    Registered,
    RegistryState,
    Route,
    RouteChange,
    RouteHistoryEntry,
    RouteUpdate,
    TaskRecord,
    TaskStatus,
)
from mtserve.tasks import Catalogue, Channel, Task, Taxonomy
from mtserve_api import convert
from mtserve_api.client import DEFAULT_MAX_MESSAGE_BYTES, ServiceClient, raise_remote
from mtserve_api.v1 import registry_pb2 as rpb
from mtserve_api.v1 import registry_pb2_grpc as rpb_grpc

if TYPE_CHECKING:
    from mtserve.config import Settings

SERVICE = "mtserve.v1.Registry"


class WatchStream:
    """The registry's watch stream as (is_snapshot, state) pairs; `cancel()`
    from another thread ends the iteration."""

    def __init__(self, call: Any, address: str):
        self._call, self._address = call, address

    def __iter__(self) -> Iterator[tuple[bool, RegistryState]]:
        try:
            for event in self._call:
                yield convert.watch_event_from_pb(event)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.CANCELLED:
                return
            raise_remote(exc, "registry", self._address)

    def cancel(self) -> None:
        self._call.cancel()


class RegistryClient(ServiceClient):
    SERVICE, NAME = SERVICE, "registry"
    # Reads only. Writes are not retried: a SetRoutes or RegisterCheckpoint
    # the server did apply before its answer was lost would be applied and
    # audited twice, and RollbackRoute would roll back twice.
    RETRY = ("GetTask", "ListTasks", "GetTruncationPolicy", "GetCheckpoint", "ListCheckpoints", "GetRoutes", "GetRouteHistory",
             "GetAuditLog", "Watch")

    def __init__(
        self, address: str, *, timeout: float = 30.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, keepalive: bool = False,
        token: str | None = None, settings: Settings | None = None,
    ):
        super().__init__(address, timeout=timeout, max_message_bytes=max_message_bytes, keepalive=keepalive, token=token, settings=settings)
        self.stub = rpb_grpc.RegistryStub(self.channel)

    # -- tasks -----------------------------------------------------------------------
    # Every write takes `reason`, kept in the registry's audit log with the caller's token name.
    def register_task(self, task: Task, *, reason: str = "") -> Registered:
        request = rpb.RegisterTaskRequest(task=convert.task_to_pb(task), reason=reason)
        return convert.registered_from_pb(self._call(self.stub.RegisterTask, request))

    def apply_catalogue(self, catalogue: Catalogue, *, reason: str = "") -> tuple[list[Registered], int]:
        request = rpb.ApplyCatalogueRequest(
            catalogue=catalogue.name,
            tasks=[convert.task_to_pb(t) for t in catalogue.tasks],
            truncation=convert.policy_to_pb(PolicyRecord(catalogue.truncation, catalogue.name)),
            reason=reason,
        )
        response = self._call(self.stub.ApplyCatalogue, request)
        return [convert.registered_from_pb(r) for r in response.results], response.revision

    def get_task(self, name: str, version: int | None = None) -> TaskRecord:
        request = rpb.GetTaskRequest(name=name)
        if version is not None:
            request.version = version
        return convert.task_record_from_pb(self._call(self.stub.GetTask, request))

    def list_tasks(self, *, channel: Channel | None = None, taxonomy: Taxonomy | None = None, status: TaskStatus | None = None) -> list[TaskRecord]:
        request = rpb.ListTasksRequest(
            channel=convert.enum_to_pb(channel, Channel),
            taxonomy=convert.enum_to_pb(taxonomy, Taxonomy),
            status=convert.enum_to_pb(status, TaskStatus),
        )
        return [convert.task_record_from_pb(r) for r in self._call(self.stub.ListTasks, request).tasks]

    def retire_task(self, name: str, *, reason: str = "") -> TaskRecord:
        return convert.task_record_from_pb(self._call(self.stub.RetireTask, rpb.RetireTaskRequest(name=name, reason=reason)))

    def truncation_policy(self) -> PolicyRecord:
        return convert.policy_from_pb(self._call(self.stub.GetTruncationPolicy, rpb.GetTruncationPolicyRequest()))

    # -- checkpoints ------------------------------------------------------------------
    def register_checkpoint(self, path: str, *, timeout: float | None = None, reason: str = "") -> tuple[CheckpointRecord, bool]:
        """The registry hashes every file of the folder: a large model needs a longer timeout."""
        response = self._call(self.stub.RegisterCheckpoint, rpb.RegisterCheckpointRequest(path=str(path), reason=reason), timeout)
        return convert.checkpoint_from_pb(response.checkpoint), response.changed

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRecord:
        return convert.checkpoint_from_pb(self._call(self.stub.GetCheckpoint, rpb.GetCheckpointRequest(id=checkpoint_id)))

    def list_checkpoints(self) -> list[CheckpointRecord]:
        return [convert.checkpoint_from_pb(c) for c in self._call(self.stub.ListCheckpoints, rpb.ListCheckpointsRequest()).checkpoints]

    # -- routes ---------------------------------------------------------------------------
    def set_route(self, task: str, checkpoint_id: str, *, task_version: int | None = None, reason: str = "") -> RouteUpdate:
        request = rpb.SetRouteRequest(route=convert.route_change_to_pb(RouteChange(task, checkpoint_id, task_version)), reason=reason)
        updates, _ = convert.route_updates_from_pb(self._call(self.stub.SetRoute, request))
        return updates[0]

    def set_routes(self, changes: Sequence[RouteChange], *, reason: str = "") -> tuple[list[RouteUpdate], int]:
        """Move many tasks in one transaction (a training job's promotion):
        all of them or, on any error, none."""
        request = rpb.SetRoutesRequest(routes=[convert.route_change_to_pb(c) for c in changes], reason=reason)
        return convert.route_updates_from_pb(self._call(self.stub.SetRoutes, request))

    def get_routes(self) -> tuple[list[Route], int]:
        table = self._call(self.stub.GetRoutes, rpb.GetRoutesRequest())
        return [convert.route_from_pb(r) for r in table.routes], table.revision

    def rollback(self, task: str) -> Route:
        return convert.route_from_pb(self._call(self.stub.RollbackRoute, rpb.RollbackRouteRequest(task=task)))

    def route_history(self, task: str) -> list[RouteHistoryEntry]:
        return convert.history_from_pb(self._call(self.stub.GetRouteHistory, rpb.GetRouteHistoryRequest(task=task)))

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The newest writes, newest first (operator role)."""
        response = self._call(self.stub.GetAuditLog, rpb.GetAuditLogRequest(limit=limit))
        return [convert.audit_entry_from_pb(e) for e in response.entries]

    # -- watch ------------------------------------------------------------------------------
    def watch(self, client: str = "") -> WatchStream:
        """An open-ended stream: no deadline (it lives as long as the
        registry); keepalive on the channel detects a dead peer."""
        return WatchStream(self.stub.Watch(rpb.WatchRequest(client=client)), self.address)
