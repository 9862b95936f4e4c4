from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_INTERRUPTED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_INTERRUPTED: JobState

class StartJobRequest(_message.Message):
    __slots__ = ("spec_yaml", "base_dir", "promote", "register", "registry_address", "resume", "restart")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    base_dir: str
    promote: bool
    register: bool
    registry_address: str
    resume: bool
    restart: bool
    def __init__(self, spec_yaml: _Optional[str] = ..., base_dir: _Optional[str] = ..., promote: _Optional[bool] = ..., register: _Optional[bool] = ..., registry_address: _Optional[str] = ..., resume: _Optional[bool] = ..., restart: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "name", "limit")
    STATES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    name: str
    limit: int
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id", "from_seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    id: str
    from_seq: int
    def __init__(self, id: _Optional[str] = ..., from_seq: _Optional[int] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("event", "job")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    job: Job
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class JobOptions(_message.Message):
    __slots__ = ("promote", "register", "registry_address", "base_dir")
    PROMOTE_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    promote: bool
    register: bool
    registry_address: str
    base_dir: str
    def __init__(self, promote: _Optional[bool] = ..., register: _Optional[bool] = ..., registry_address: _Optional[str] = ..., base_dir: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("run", "stage", "step", "steps", "loss", "tokens_per_s", "last_event", "runs_done", "events", "dev")
    class DevEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_FIELD_NUMBER: _ClassVar[int]
    RUNS_DONE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DEV_FIELD_NUMBER: _ClassVar[int]
    run: str
    stage: str
    step: int
    steps: int
    loss: float
    tokens_per_s: float
    last_event: str
    runs_done: int
    events: int
    dev: _containers.ScalarMap[str, float]
    def __init__(self, run: _Optional[str] = ..., stage: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., loss: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., last_event: _Optional[str] = ..., runs_done: _Optional[int] = ..., events: _Optional[int] = ..., dev: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("action", "pid", "started_at", "ended_at", "exit_code", "outcome", "worker")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    action: str
    pid: int
    started_at: str
    ended_at: str
    exit_code: int
    outcome: str
    worker: str
    def __init__(self, action: _Optional[str] = ..., pid: _Optional[int] = ..., started_at: _Optional[str] = ..., ended_at: _Optional[str] = ..., exit_code: _Optional[int] = ..., outcome: _Optional[str] = ..., worker: _Optional[str] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("value", "low", "high", "metric")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    value: float
    low: float
    high: float
    metric: str
    def __init__(self, value: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., metric: _Optional[str] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task", "group", "checkpoint_id", "zero_shot", "baseline", "multi_task", "ratio", "ratio_low", "ratio_high", "qualified", "verdict", "definition_hash")
    TASK_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    ZERO_SHOT_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    MULTI_TASK_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    RATIO_LOW_FIELD_NUMBER: _ClassVar[int]
    RATIO_HIGH_FIELD_NUMBER: _ClassVar[int]
    QUALIFIED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_HASH_FIELD_NUMBER: _ClassVar[int]
    task: str
    group: str
    checkpoint_id: str
    zero_shot: Estimate
    baseline: Estimate
    multi_task: Estimate
    ratio: float
    ratio_low: float
    ratio_high: float
    qualified: bool
    verdict: str
    definition_hash: str
    def __init__(self, task: _Optional[str] = ..., group: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., zero_shot: _Optional[_Union[Estimate, _Mapping]] = ..., baseline: _Optional[_Union[Estimate, _Mapping]] = ..., multi_task: _Optional[_Union[Estimate, _Mapping]] = ..., ratio: _Optional[float] = ..., ratio_low: _Optional[float] = ..., ratio_high: _Optional[float] = ..., qualified: _Optional[bool] = ..., verdict: _Optional[str] = ..., definition_hash: _Optional[str] = ...) -> None: ...

class RegisteredCheckpoint(_message.Message):
    __slots__ = ("id", "path", "changed")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    changed: bool
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ..., changed: _Optional[bool] = ...) -> None: ...

class TaskPromotion(_message.Message):
    __slots__ = ("task", "action", "checkpoint_id", "from_checkpoint_id", "to_checkpoint_id", "task_version", "reason", "verdict", "ratio", "ratio_low", "ratio_high")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    RATIO_LOW_FIELD_NUMBER: _ClassVar[int]
    RATIO_HIGH_FIELD_NUMBER: _ClassVar[int]
    task: str
    action: str
    checkpoint_id: str
    from_checkpoint_id: str
    to_checkpoint_id: str
    task_version: int
    reason: str
    verdict: str
    ratio: float
    ratio_low: float
    ratio_high: float
    def __init__(self, task: _Optional[str] = ..., action: _Optional[str] = ..., checkpoint_id: _Optional[str] = ..., from_checkpoint_id: _Optional[str] = ..., to_checkpoint_id: _Optional[str] = ..., task_version: _Optional[int] = ..., reason: _Optional[str] = ..., verdict: _Optional[str] = ..., ratio: _Optional[float] = ..., ratio_low: _Optional[float] = ..., ratio_high: _Optional[float] = ...) -> None: ...

class Promotion(_message.Message):
    __slots__ = ("registry", "promote", "registered", "tasks", "revision", "reason")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    registry: str
    promote: bool
    registered: _containers.RepeatedCompositeFieldContainer[RegisteredCheckpoint]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskPromotion]
    revision: int
    reason: str
    def __init__(self, registry: _Optional[str] = ..., promote: _Optional[bool] = ..., registered: _Optional[_Iterable[_Union[RegisteredCheckpoint, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[TaskPromotion, _Mapping]]] = ..., revision: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("checkpoints", "num_qualified", "overhead", "seconds", "tasks", "promotion", "result_json")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    NUM_QUALIFIED_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedScalarFieldContainer[str]
    num_qualified: int
    overhead: float
    seconds: float
    tasks: _containers.RepeatedCompositeFieldContainer[TaskResult]
    promotion: Promotion
    result_json: str
    def __init__(self, checkpoints: _Optional[_Iterable[str]] = ..., num_qualified: _Optional[int] = ..., overhead: _Optional[float] = ..., seconds: _Optional[float] = ..., tasks: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., promotion: _Optional[_Union[Promotion, _Mapping]] = ..., result_json: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "name", "state", "created_at", "started_at", "finished_at", "options", "spec_yaml", "progress", "error", "attempts", "result", "folder")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: JobState
    created_at: str
    started_at: str
    finished_at: str
    options: JobOptions
    spec_yaml: str
    progress: Progress
    error: str
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    result: JobResult
    folder: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., created_at: _Optional[str] = ..., started_at: _Optional[str] = ..., finished_at: _Optional[str] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., spec_yaml: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., error: _Optional[str] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., folder: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("seq", "event", "time", "run", "stage", "step", "steps", "loss", "tokens_per_s", "values", "json")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    event: str
    time: float
    run: str
    stage: str
    step: int
    steps: int
    loss: float
    tokens_per_s: float
    values: _containers.ScalarMap[str, float]
    json: str
    def __init__(self, seq: _Optional[int] = ..., event: _Optional[str] = ..., time: _Optional[float] = ..., run: _Optional[str] = ..., stage: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., loss: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., values: _Optional[_Mapping[str, float]] = ..., json: _Optional[str] = ...) -> None: ...
