from mtserve_api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("task", "input", "no_truncate")
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    NO_TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    task: str
    input: _common_pb2.Input
    no_truncate: bool
    def __init__(self, task: _Optional[str] = ..., input: _Optional[_Union[_common_pb2.Input, _Mapping]] = ..., no_truncate: _Optional[bool] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "compute_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    compute_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("task", "task_version", "label", "labels", "scores", "expected_value", "text", "prompt_tokens", "truncated", "checkpoint_id", "timing")
    TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    task: str
    task_version: int
    label: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    expected_value: float
    text: str
    prompt_tokens: int
    truncated: bool
    checkpoint_id: str
    timing: Timing
    def __init__(self, task: _Optional[str] = ..., task_version: _Optional[int] = ..., label: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., expected_value: _Optional[float] = ..., text: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., truncated: _Optional[bool] = ..., checkpoint_id: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("prediction",)
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ...) -> None: ...

class ClassifyManyRequest(_message.Message):
    __slots__ = ("input", "tasks", "no_truncate")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NO_TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    input: _common_pb2.Input
    tasks: _containers.RepeatedScalarFieldContainer[str]
    no_truncate: bool
    def __init__(self, input: _Optional[_Union[_common_pb2.Input, _Mapping]] = ..., tasks: _Optional[_Iterable[str]] = ..., no_truncate: _Optional[bool] = ...) -> None: ...

class SkippedTask(_message.Message):
    __slots__ = ("task", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: str
    reason: str
    def __init__(self, task: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ClassifyManyResponse(_message.Message):
    __slots__ = ("predictions", "skipped")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedTask]
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[SkippedTask, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("task", "input", "no_truncate")
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    NO_TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    task: str
    input: _common_pb2.Input
    no_truncate: bool
    def __init__(self, task: _Optional[str] = ..., input: _Optional[_Union[_common_pb2.Input, _Mapping]] = ..., no_truncate: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("prediction",)
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadedCheckpoint(_message.Message):
    __slots__ = ("id", "path", "loaded", "error", "queue_depth", "tasks", "dtype", "dtype_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    loaded: bool
    error: str
    queue_depth: int
    tasks: _containers.RepeatedScalarFieldContainer[str]
    dtype: str
    dtype_reason: str
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ..., loaded: _Optional[bool] = ..., error: _Optional[str] = ..., queue_depth: _Optional[int] = ..., tasks: _Optional[_Iterable[str]] = ..., dtype: _Optional[str] = ..., dtype_reason: _Optional[str] = ...) -> None: ...

class ServedTask(_message.Message):
    __slots__ = ("task", "version", "checkpoint_id", "serving", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: str
    version: int
    checkpoint_id: str
    serving: bool
    reason: str
    def __init__(self, task: _Optional[str] = ..., version: _Optional[int] = ..., checkpoint_id: _Optional[str] = ..., serving: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("checkpoints", "tasks", "queue_depth", "registry_revision", "registry_connected", "state_source")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_REVISION_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    STATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[LoadedCheckpoint]
    tasks: _containers.RepeatedCompositeFieldContainer[ServedTask]
    queue_depth: int
    registry_revision: int
    registry_connected: bool
    state_source: str
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[LoadedCheckpoint, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[ServedTask, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., registry_revision: _Optional[int] = ..., registry_connected: _Optional[bool] = ..., state_source: _Optional[str] = ...) -> None: ...
