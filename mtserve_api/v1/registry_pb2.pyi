from mtserve_api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATUS_UNSPECIFIED: _ClassVar[TaskStatus]
    TASK_STATUS_ACTIVE: _ClassVar[TaskStatus]
    TASK_STATUS_RETIRED: _ClassVar[TaskStatus]
TASK_STATUS_UNSPECIFIED: TaskStatus
TASK_STATUS_ACTIVE: TaskStatus
TASK_STATUS_RETIRED: TaskStatus

class TaskRecord(_message.Message):
    __slots__ = ("task", "status", "latest_version", "created_at")
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    status: TaskStatus
    latest_version: int
    created_at: str
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., latest_version: _Optional[int] = ..., created_at: _Optional[str] = ...) -> None: ...

class RegisterTaskRequest(_message.Message):
    __slots__ = ("task", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    reason: str
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class RegisterTaskResponse(_message.Message):
    __slots__ = ("record", "changed")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    record: TaskRecord
    changed: bool
    def __init__(self, record: _Optional[_Union[TaskRecord, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class ApplyCatalogueRequest(_message.Message):
    __slots__ = ("catalogue", "tasks", "truncation", "reason")
    CATALOGUE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    catalogue: str
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    truncation: _common_pb2.TruncationPolicy
    reason: str
    def __init__(self, catalogue: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ..., truncation: _Optional[_Union[_common_pb2.TruncationPolicy, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ApplyCatalogueResponse(_message.Message):
    __slots__ = ("results", "revision")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RegisterTaskResponse]
    revision: int
    def __init__(self, results: _Optional[_Iterable[_Union[RegisterTaskResponse, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("channel", "taxonomy", "status")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TAXONOMY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    channel: _common_pb2.Channel
    taxonomy: _common_pb2.Taxonomy
    status: TaskStatus
    def __init__(self, channel: _Optional[_Union[_common_pb2.Channel, str]] = ..., taxonomy: _Optional[_Union[_common_pb2.Taxonomy, str]] = ..., status: _Optional[_Union[TaskStatus, str]] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskRecord]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskRecord, _Mapping]]] = ...) -> None: ...

class RetireTaskRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetTruncationPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("id", "path", "kind", "manifest_json", "manifest_sha256", "registered_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    kind: str
    manifest_json: str
    manifest_sha256: str
    registered_at: str
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ..., kind: _Optional[str] = ..., manifest_json: _Optional[str] = ..., manifest_sha256: _Optional[str] = ..., registered_at: _Optional[str] = ...) -> None: ...

class RegisterCheckpointRequest(_message.Message):
    __slots__ = ("path", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RegisterCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint", "changed")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    changed: bool
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("task", "task_version", "checkpoint_id", "updated_at", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: str
    task_version: int
    checkpoint_id: str
    updated_at: str
    reason: str
    def __init__(self, task: _Optional[str] = ..., task_version: _Optional[int] = ..., checkpoint_id: _Optional[str] = ..., updated_at: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RouteChange(_message.Message):
    __slots__ = ("task", "checkpoint_id", "task_version")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    task: str
    checkpoint_id: str
    task_version: int
    def __init__(self, task: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., task_version: _Optional[int] = ...) -> None: ...

class SetRouteRequest(_message.Message):
    __slots__ = ("route", "reason")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    route: RouteChange
    reason: str
    def __init__(self, route: _Optional[_Union[RouteChange, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetRoutesRequest(_message.Message):
    __slots__ = ("routes", "reason")
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[RouteChange]
    reason: str
    def __init__(self, routes: _Optional[_Iterable[_Union[RouteChange, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class RouteUpdate(_message.Message):
    __slots__ = ("route", "changed")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    route: Route
    changed: bool
    def __init__(self, route: _Optional[_Union[Route, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class SetRoutesResponse(_message.Message):
    __slots__ = ("updates", "revision")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[RouteUpdate]
    revision: int
    def __init__(self, updates: _Optional[_Iterable[_Union[RouteUpdate, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetRoutesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RouteTable(_message.Message):
    __slots__ = ("routes", "revision")
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    revision: int
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class RollbackRouteRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: str
    def __init__(self, task: _Optional[str] = ...) -> None: ...

class GetRouteHistoryRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: str
    def __init__(self, task: _Optional[str] = ...) -> None: ...

class RouteHistoryEntry(_message.Message):
    __slots__ = ("route", "current", "rolled_back_at", "actor")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    route: Route
    current: bool
    rolled_back_at: str
    actor: str
    def __init__(self, route: _Optional[_Union[Route, _Mapping]] = ..., current: _Optional[bool] = ..., rolled_back_at: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class RouteHistory(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[RouteHistoryEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[RouteHistoryEntry, _Mapping]]] = ...) -> None: ...

class GetAuditLogRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("revision", "at", "actor", "action", "target", "reason")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    revision: int
    at: str
    actor: str
    action: str
    target: str
    reason: str
    def __init__(self, revision: _Optional[int] = ..., at: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AuditLog(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("client",)
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    client: str
    def __init__(self, client: _Optional[str] = ...) -> None: ...

class RegistryState(_message.Message):
    __slots__ = ("tasks", "routes", "checkpoints", "truncation")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskRecord]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    truncation: _common_pb2.TruncationPolicy
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskRecord, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., truncation: _Optional[_Union[_common_pb2.TruncationPolicy, _Mapping]] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("revision", "snapshot", "change")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    snapshot: RegistryState
    change: RegistryState
    def __init__(self, revision: _Optional[int] = ..., snapshot: _Optional[_Union[RegistryState, _Mapping]] = ..., change: _Optional[_Union[RegistryState, _Mapping]] = ...) -> None: ...
