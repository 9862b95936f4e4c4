"""Every conversion between protobuf messages (mtserve_api.v1) and domain objects,
in one place, so servicers and clients stay thin.

`*_from_pb` validates with the core's own rules: a task arriving over the wire
is rebuilt as the mapping a catalogue file would hold and goes through
`parse_task`, so a gRPC caller gets the same message (field, rule, value) as an
ops engineer editing YAML. Imports protobuf only, never grpc.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any, overload

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from mtserve.errors import ValidationError
from mtserve.inputs import Conversation, Input, Speaker, Text, TextPair, Turn, validate_input
from mtserve.predictions import Answer, Timing
from mtserve.records import (
    AuditEntry,
    CheckpointInfo,
    CheckpointRecord,
    PolicyRecord,
    Registered,
    RegistryState,
    Route,
    RouteChange,
    RouteHistoryEntry,
    RouteUpdate,
    ServingInfo,
    TaskInfo,
    TaskRecord,
    TaskStatus,
)
from mtserve.tasks import Channel, InputKind, Metric, Task, Taxonomy, TruncationPolicy, parse_task
from mtserve_api.v1 import common_pb2 as cpb
from mtserve_api.v1 import inference_pb2 as ipb
from mtserve_api.v1 import registry_pb2 as rpb

# -- enums ---------------------------------------------------------------------------
# A proto enum value is the domain value upper-cased behind a prefix:
# Taxonomy.MULTILABEL <-> TAXONOMY_MULTILABEL, InputKind.TEXT_PAIR <-> INPUT_KIND_TEXT_PAIR.
# (A generated enum class is an instance of its metaclass, EnumTypeWrapper:
# that is where Value, Name and keys live.)
_PREFIX: dict[type[StrEnum], tuple[str, EnumTypeWrapper]] = {
    Taxonomy: ("TAXONOMY_", cpb.Taxonomy),
    InputKind: ("INPUT_KIND_", cpb.InputKind),
    Channel: ("CHANNEL_", cpb.Channel),
    Metric: ("METRIC_", cpb.Metric),
    Speaker: ("SPEAKER_", cpb.Speaker),
    TaskStatus: ("TASK_STATUS_", rpb.TaskStatus),
}


# The generated stubs type an enum field as its proto enum class (an int at run
# time), so each domain enum maps to its own: a message constructor takes it.
@overload
def enum_to_pb(value: Taxonomy | None, enum_cls: type[Taxonomy]) -> cpb.Taxonomy: ...
@overload
def enum_to_pb(value: InputKind | None, enum_cls: type[InputKind]) -> cpb.InputKind: ...
@overload
def enum_to_pb(value: Channel | None, enum_cls: type[Channel]) -> cpb.Channel: ...
@overload
def enum_to_pb(value: Metric | None, enum_cls: type[Metric]) -> cpb.Metric: ...
@overload
def enum_to_pb(value: Speaker | None, enum_cls: type[Speaker]) -> cpb.Speaker: ...
@overload
def enum_to_pb(value: TaskStatus | None, enum_cls: type[TaskStatus]) -> rpb.TaskStatus: ...
def enum_to_pb(value: StrEnum | None, enum_cls: type[StrEnum]) -> int:
    prefix, wrapper = _PREFIX[enum_cls]
    return 0 if value is None else wrapper.Value(prefix + value.value.upper())


def enum_value(number: int, enum_cls: type[StrEnum], where: str) -> str | None:
    """The domain value string of an enum number; None for UNSPECIFIED. An
    unknown number (a newer client) is refused naming the field."""
    prefix, wrapper = _PREFIX[enum_cls]
    if number == 0:
        return None
    try:
        name = wrapper.Name(number)
    except ValueError:
        allowed = ", ".join(wrapper.keys()[1:])
        raise ValidationError(where, f"unknown enum value; allowed: {allowed}", number) from None
    return name[len(prefix):].lower()


def enum_from_pb(number: int, enum_cls: type[StrEnum], where: str) -> Any:
    value = enum_value(number, enum_cls, where)
    return None if value is None else enum_cls(value)


# -- tasks -----------------------------------------------------------------------------
def task_to_pb(task: Task) -> cpb.Task:
    msg = cpb.Task(
        name=task.name,
        version=task.version or 0,
        title=task.title,
        description=task.description,
        instruction=task.instruction,
        input_kind=enum_to_pb(task.input_kind, InputKind),
        taxonomy=enum_to_pb(task.taxonomy, Taxonomy),
        channels=[enum_to_pb(c, Channel) for c in task.channels],
        metric=enum_to_pb(task.metric, Metric),
        max_input_tokens=task.max_input_tokens,
    )
    for label in task.labels:
        lab = msg.labels.add(name=label.name, verbalizer=label.verbalizer, description=label.description)
        if label.value is not None:
            lab.value = label.value
    if task.taxonomy is Taxonomy.MULTILABEL:
        msg.threshold = task.threshold
    if task.is_generation:
        msg.max_new_tokens = task.max_new_tokens
    return msg


def task_from_pb(msg: cpb.Task, where: str = "task", *, keep_version: bool = False) -> Task:
    """Validate a task message with the catalogue rules. The version is the
    registry's to assign, so it is dropped unless `keep_version` (messages the
    registry itself sent)."""
    data: dict[str, Any] = {
        "name": msg.name,
        "instruction": msg.instruction,
        "input_kind": enum_value(msg.input_kind, InputKind, f"{where}.input_kind"),
        "taxonomy": enum_value(msg.taxonomy, Taxonomy, f"{where}.taxonomy"),
        "channels": [enum_value(c, Channel, f"{where}.channels[{i}]") for i, c in enumerate(msg.channels)],
    }
    if msg.title:
        data["title"] = msg.title
    if msg.description:
        data["description"] = msg.description
    if msg.metric:
        data["metric"] = enum_value(msg.metric, Metric, f"{where}.metric")
    for key in ("max_input_tokens", "threshold", "max_new_tokens"):
        if msg.HasField(key):
            data[key] = getattr(msg, key)
    if msg.labels:
        labels = []
        for label in msg.labels:
            item: dict[str, Any] = {"name": label.name}
            if label.HasField("verbalizer"):
                item["verbalizer"] = label.verbalizer
            if label.HasField("value"):
                item["value"] = label.value
            if label.description:
                item["description"] = label.description
            labels.append(item)
        data["labels"] = labels
    if keep_version and msg.version:
        data["version"] = msg.version
    return parse_task(data, where)


def task_record_to_pb(record: TaskRecord) -> rpb.TaskRecord:
    return rpb.TaskRecord(
        task=task_to_pb(record.task),
        status=enum_to_pb(record.status, TaskStatus),
        latest_version=record.latest_version,
        created_at=record.created_at,
    )


def task_record_from_pb(msg: rpb.TaskRecord, where: str = "record") -> TaskRecord:
    return TaskRecord(
        task=task_from_pb(msg.task, f"{where}.task", keep_version=True),
        status=enum_from_pb(msg.status, TaskStatus, f"{where}.status") or TaskStatus.ACTIVE,
        latest_version=msg.latest_version,
        created_at=msg.created_at,
    )


def registered_to_pb(result: Registered) -> rpb.RegisterTaskResponse:
    return rpb.RegisterTaskResponse(record=task_record_to_pb(result.record), changed=result.changed)


def registered_from_pb(msg: rpb.RegisterTaskResponse) -> Registered:
    return Registered(task_record_from_pb(msg.record), msg.changed)


# -- truncation policy --------------------------------------------------------------------
def policy_to_pb(record: PolicyRecord) -> cpb.TruncationPolicy:
    msg = cpb.TruncationPolicy(source=record.source)
    for b in record.policy.budgets:
        msg.budgets.add(
            input_kind=enum_to_pb(b.input_kind, InputKind),
            channel=enum_to_pb(b.channel, Channel),
            max_tokens=b.max_tokens,
            keep_first_turns=b.keep_first_turns,
        )
    return msg


def policy_from_pb(msg: cpb.TruncationPolicy, where: str = "truncation") -> PolicyRecord:
    raw = []
    for i, b in enumerate(msg.budgets):
        item: dict[str, Any] = {
            "input_kind": enum_value(b.input_kind, InputKind, f"{where}[{i}].input_kind"),
            "channel": enum_value(b.channel, Channel, f"{where}[{i}].channel"),
            "max_tokens": b.max_tokens,
        }
        if b.HasField("keep_first_turns"):
            item["keep_first_turns"] = b.keep_first_turns
        raw.append(item)
    return PolicyRecord(TruncationPolicy.from_list(raw, where), msg.source)


# -- inputs ---------------------------------------------------------------------------------
def input_to_pb(inp: Input) -> cpb.Input:
    if isinstance(inp, Conversation):
        conv = cpb.Conversation(
            conversation_id=inp.conversation_id or "",
            channel=enum_to_pb(inp.channel, Channel),
            turns=[cpb.Turn(speaker=enum_to_pb(t.speaker, Speaker), text=t.text, timestamp=t.timestamp or "") for t in inp.turns],
        )
        if inp.metadata:
            conv.metadata.update(dict(inp.metadata))
        return cpb.Input(conversation=conv)
    if isinstance(inp, TextPair):
        return cpb.Input(text_pair=cpb.TextPair(text=inp.text, text_b=inp.text_b, channel=enum_to_pb(inp.channel, Channel)))
    return cpb.Input(text=cpb.Text(text=inp.text, channel=enum_to_pb(inp.channel, Channel)))


def input_from_pb(msg: cpb.Input, where: str = "input") -> Input:
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise ValidationError(where, "must hold one of text, text_pair or conversation", None, show_value=False)
    if kind == "text":
        inp: Input = Text(text=msg.text.text, channel=enum_from_pb(msg.text.channel, Channel, f"{where}.text.channel"))
        return validate_input(inp, f"{where}.text")
    if kind == "text_pair":
        p = msg.text_pair
        return validate_input(TextPair(text=p.text, text_b=p.text_b, channel=enum_from_pb(p.channel, Channel, f"{where}.text_pair.channel")), f"{where}.text_pair")
    c = msg.conversation
    at = f"{where}.conversation"
    channel = enum_from_pb(c.channel, Channel, f"{at}.channel")
    if channel is None:
        raise ValidationError(f"{at}.channel", "a conversation needs a channel (call or im)", None, show_value=False)
    turns = []
    for i, t in enumerate(c.turns):
        speaker = enum_from_pb(t.speaker, Speaker, f"{at}.turns[{i}].speaker")
        if speaker is None:
            raise ValidationError(f"{at}.turns[{i}].speaker", "must be agent, customer or system", "SPEAKER_UNSPECIFIED")
        turns.append(Turn(speaker=speaker, text=t.text, timestamp=t.timestamp or None))
    metadata = json_format.MessageToDict(c.metadata) if c.HasField("metadata") else {}
    conv = Conversation(channel=channel, turns=tuple(turns), conversation_id=c.conversation_id or None, metadata=metadata)
    return validate_input(conv, at)


# -- predictions ------------------------------------------------------------------------------
def prediction_to_pb(answer: Answer) -> ipb.Prediction:
    p = answer.prediction
    msg = ipb.Prediction(
        task=p.task,
        task_version=p.task_version or 0,
        label=p.label or "",
        labels=list(p.labels),
        scores=[cpb.LabelScore(label=s.label, probability=s.probability) for s in p.scores],
        prompt_tokens=p.prompt_tokens,
        truncated=p.truncated,
        checkpoint_id=answer.checkpoint_id,
        timing=ipb.Timing(queue_ms=answer.timing.queue_ms, compute_ms=answer.timing.compute_ms),
    )
    if p.expected_value is not None:
        msg.expected_value = p.expected_value
    if p.text is not None:
        msg.text = p.text
    return msg


def prediction_from_pb(msg: ipb.Prediction) -> Answer:
    # mtserve.engine imports torch: only load it when a prediction is read,
    # so the registry CLI commands start fast.
    from mtserve.predictions import LabelScore, Prediction

    prediction = Prediction(
        task=msg.task,
        task_version=msg.task_version or None,
        label=msg.label or None,
        labels=tuple(msg.labels),
        scores=tuple(LabelScore(s.label, s.probability) for s in msg.scores),
        expected_value=msg.expected_value if msg.HasField("expected_value") else None,
        text=msg.text if msg.HasField("text") else None,
        prompt_tokens=msg.prompt_tokens,
        truncated=msg.truncated,
    )
    return Answer(prediction, msg.checkpoint_id, Timing(msg.timing.queue_ms, msg.timing.compute_ms))


# -- checkpoints and routes ----------------------------------------------------------------------
def checkpoint_to_pb(c: CheckpointRecord) -> rpb.Checkpoint:
    return rpb.Checkpoint(
        id=c.id, path=c.path, kind=c.kind, manifest_json=c.manifest_json, manifest_sha256=c.manifest_sha256, registered_at=c.registered_at
    )


def checkpoint_from_pb(msg: rpb.Checkpoint) -> CheckpointRecord:
    return CheckpointRecord(msg.id, msg.path, msg.kind, msg.manifest_json, msg.manifest_sha256, msg.registered_at)


def route_to_pb(r: Route) -> rpb.Route:
    return rpb.Route(task=r.task, task_version=r.task_version, checkpoint_id=r.checkpoint_id, updated_at=r.updated_at, reason=r.reason)


def route_from_pb(msg: rpb.Route) -> Route:
    return Route(msg.task, msg.task_version, msg.checkpoint_id, msg.updated_at, msg.reason)


def route_change_to_pb(c: RouteChange) -> rpb.RouteChange:
    msg = rpb.RouteChange(task=c.task, checkpoint_id=c.checkpoint_id)
    if c.task_version is not None:
        msg.task_version = c.task_version
    return msg


def route_change_from_pb(msg: rpb.RouteChange, where: str = "route") -> RouteChange:
    # Names and ids are checked by the store, which names the field; here
    # only what the message shape alone can get wrong.
    version = msg.task_version if msg.HasField("task_version") else None
    if version == 0:
        raise ValidationError(f"{where}.task_version", "must be a positive integer (omit it for the latest version)", 0)
    return RouteChange(task=msg.task, checkpoint_id=msg.checkpoint_id, task_version=version)


def route_updates_to_pb(updates: Sequence[RouteUpdate], revision: int) -> rpb.SetRoutesResponse:
    return rpb.SetRoutesResponse(updates=[rpb.RouteUpdate(route=route_to_pb(u.route), changed=u.changed) for u in updates], revision=revision)


def route_updates_from_pb(msg: rpb.SetRoutesResponse) -> tuple[list[RouteUpdate], int]:
    return [RouteUpdate(route_from_pb(u.route), u.changed) for u in msg.updates], msg.revision


def audit_entry_to_pb(e: AuditEntry) -> rpb.AuditEntry:
    return rpb.AuditEntry(revision=e.revision, at=e.at, actor=e.actor, action=e.action, target=e.target, reason=e.reason)


def audit_entry_from_pb(msg: rpb.AuditEntry) -> AuditEntry:
    return AuditEntry(msg.revision, msg.at, msg.actor, msg.action, msg.target, msg.reason)


def history_to_pb(entries: Iterable[RouteHistoryEntry]) -> rpb.RouteHistory:
    return rpb.RouteHistory(
        entries=[
            rpb.RouteHistoryEntry(route=route_to_pb(e.route), current=e.current, rolled_back_at=e.rolled_back_at, actor=e.actor)
            for e in entries
        ]
    )


def history_from_pb(msg: rpb.RouteHistory) -> list[RouteHistoryEntry]:
    return [RouteHistoryEntry(route_from_pb(e.route), e.current, e.rolled_back_at, e.actor) for e in msg.entries]


# -- the watch stream -----------------------------------------------------------------------------
def state_to_pb(state: RegistryState) -> rpb.RegistryState:
    msg = rpb.RegistryState(
        tasks=[task_record_to_pb(r) for r in state.tasks],
        routes=[route_to_pb(r) for r in state.routes],
        checkpoints=[checkpoint_to_pb(c) for c in state.checkpoints],
    )
    if state.policy is not None:
        msg.truncation.CopyFrom(policy_to_pb(state.policy))
    return msg


def state_from_pb(msg: rpb.RegistryState, revision: int, where: str = "state") -> RegistryState:
    return RegistryState(
        revision=revision,
        tasks=tuple(task_record_from_pb(r, f"{where}.tasks[{i}]") for i, r in enumerate(msg.tasks)),
        routes=tuple(route_from_pb(r) for r in msg.routes),
        checkpoints=tuple(checkpoint_from_pb(c) for c in msg.checkpoints),
        policy=policy_from_pb(msg.truncation, f"{where}.truncation") if msg.HasField("truncation") else None,
    )


def watch_event_to_pb(state: RegistryState, *, snapshot: bool) -> rpb.WatchEvent:
    body = state_to_pb(state)
    if snapshot:
        return rpb.WatchEvent(revision=state.revision, snapshot=body)
    return rpb.WatchEvent(revision=state.revision, change=body)


def watch_event_from_pb(msg: rpb.WatchEvent) -> tuple[bool, RegistryState]:
    """(is_snapshot, state or change)."""
    kind = msg.WhichOneof("event")
    if kind is None:
        raise ValidationError("watch event", "holds neither a snapshot nor a change", None, show_value=False)
    return kind == "snapshot", state_from_pb(getattr(msg, kind), msg.revision, kind)


# -- inference status --------------------------------------------------------------------------------
def serving_info_to_pb(info: ServingInfo) -> ipb.ModelInfoResponse:
    return ipb.ModelInfoResponse(
        checkpoints=[
            ipb.LoadedCheckpoint(id=c.id, path=c.path, loaded=c.loaded, error=c.error, queue_depth=c.queue_depth, tasks=list(c.tasks),
                                 dtype=c.dtype, dtype_reason=c.dtype_reason)
            for c in info.checkpoints
        ],
        tasks=[ipb.ServedTask(task=t.task, version=t.version, checkpoint_id=t.checkpoint_id, serving=t.serving, reason=t.reason) for t in info.tasks],
        queue_depth=info.queue_depth,
        registry_revision=info.registry_revision,
        registry_connected=info.registry_connected,
        state_source=info.state_source,
    )


def serving_info_from_pb(msg: ipb.ModelInfoResponse) -> ServingInfo:
    return ServingInfo(
        checkpoints=tuple(CheckpointInfo(c.id, c.path, c.loaded, c.error, c.queue_depth, tuple(c.tasks), c.dtype, c.dtype_reason)
                          for c in msg.checkpoints),
        tasks=tuple(TaskInfo(t.task, t.version, t.checkpoint_id, t.serving, t.reason) for t in msg.tasks),
        queue_depth=msg.queue_depth,
        registry_revision=msg.registry_revision,
        registry_connected=msg.registry_connected,
        state_source=msg.state_source,
    )
