"""Conversions between the trainer's protobuf messages (mtserve.v1.Trainer)
and its domain objects (services/trainer/records.py, the job result and event
dicts of trainer/). Imports protobuf only, never grpc."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from mtserve.errors import ValidationError
from mtserve_api.v1 import trainer_pb2 as tpb
from services.trainer.records import Attempt, JobInfo, JobState, Options, Progress

_STATE_PREFIX = "JOB_STATE_"


def state_to_pb(state: JobState | None) -> tpb.JobState:
    return tpb.JobState.JOB_STATE_UNSPECIFIED if state is None else tpb.JobState.Value(_STATE_PREFIX + state.value.upper())


def state_from_pb(number: int, where: str = "state") -> JobState | None:
    if number == 0:
        return None
    try:
        return JobState(tpb.JobState.Name(number)[len(_STATE_PREFIX):].lower())
    except ValueError:
        allowed = ", ".join(tpb.JobState.keys()[1:])
        raise ValidationError(where, f"unknown job state; allowed: {allowed}", number) from None


def _num(value: Any) -> float | None:
    """A finite float, or None (JSON null, or an infinite ratio written as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _estimate(data: Mapping[str, Any] | None) -> tpb.Estimate | None:
    if not data:
        return None
    return tpb.Estimate(value=_num(data.get("value")) or 0.0, low=_num(data.get("low")) or 0.0, high=_num(data.get("high")) or 0.0,
                        metric=str(data.get("metric") or ""))


def _set_optional(msg: Any, **values: Any) -> None:
    for key, value in values.items():
        if value is not None:
            setattr(msg, key, value)


def promotion_to_pb(data: Mapping[str, Any]) -> tpb.Promotion:
    msg = tpb.Promotion(
        registry=str(data.get("registry", "")), promote=bool(data.get("promote")), revision=int(data.get("revision") or 0),
        reason=str(data.get("reason", "")),
        registered=[tpb.RegisteredCheckpoint(id=c["id"], path=c["path"], changed=bool(c["changed"])) for c in data.get("registered", [])],
    )
    for t in data.get("tasks", []):
        entry = tpb.TaskPromotion(
            task=t["task"], action=t["action"], checkpoint_id=t.get("checkpoint_id") or "",
            from_checkpoint_id=(t.get("route_before") or {}).get("checkpoint_id", ""),
            to_checkpoint_id=(t.get("route_after") or {}).get("checkpoint_id", ""),
            task_version=int(t.get("task_version") or 0), reason=t.get("reason", ""), verdict=t.get("verdict") or "",
        )
        _set_optional(entry, ratio=_num(t.get("ratio")), ratio_low=_num(t.get("ratio_low")), ratio_high=_num(t.get("ratio_high")))
        msg.tasks.append(entry)
    return msg


def result_to_pb(result: Mapping[str, Any]) -> tpb.JobResult:
    msg = tpb.JobResult(
        checkpoints=[str(c) for c in result.get("checkpoints", [])], num_qualified=int(result.get("num_qualified") or 0),
        seconds=float(result.get("seconds") or 0.0), result_json=json.dumps(result, ensure_ascii=False, default=str),
    )
    _set_optional(msg, overhead=_num(result.get("overhead")))
    for row in result.get("rows", []):
        entry = tpb.TaskResult(
            task=row["task"], group=row.get("group") or "", checkpoint_id=row.get("checkpoint") or "",
            verdict=row.get("verdict") or "", definition_hash=row.get("definition_hash") or "",
        )
        for key in ("zero_shot", "baseline", "multi_task"):
            est = _estimate(row.get(key))
            if est is not None:
                getattr(entry, key).CopyFrom(est)
        _set_optional(entry, ratio=_num(row.get("ratio")), ratio_low=_num(row.get("ratio_low")), ratio_high=_num(row.get("ratio_high")),
                      qualified=row.get("qualified"))
        msg.tasks.append(entry)
    if result.get("promotion"):
        msg.promotion.CopyFrom(promotion_to_pb(result["promotion"]))
    return msg


def job_to_pb(info: JobInfo) -> tpb.Job:
    p = info.progress
    msg = tpb.Job(
        id=info.id, name=info.name, state=state_to_pb(info.state), created_at=info.created_at, started_at=info.started_at,
        finished_at=info.finished_at, spec_yaml=info.spec_yaml, error=info.error, folder=info.folder,
        options=tpb.JobOptions(promote=info.options.promote, register=info.options.register,
                               registry_address=info.options.registry_address, base_dir=info.options.base_dir),
        progress=tpb.Progress(run=p.run, stage=p.stage, step=p.step, steps=p.steps, loss=p.loss, tokens_per_s=p.tokens_per_s,
                              last_event=p.last_event, runs_done=p.runs_done, events=p.events, dev=p.dev),
    )
    for a in info.attempts:
        attempt = tpb.Attempt(action=a.action, pid=a.pid, started_at=a.started_at, ended_at=a.ended_at, outcome=a.outcome,
                              worker=a.worker)
        _set_optional(attempt, exit_code=a.exit_code)
        msg.attempts.append(attempt)
    if info.result is not None:
        msg.result.CopyFrom(result_to_pb(info.result))
    return msg


def job_from_pb(msg: tpb.Job) -> JobInfo:
    p = msg.progress
    result = json.loads(msg.result.result_json) if msg.HasField("result") and msg.result.result_json else None
    return JobInfo(
        id=msg.id, name=msg.name, state=state_from_pb(msg.state) or JobState.QUEUED, created_at=msg.created_at,
        started_at=msg.started_at, finished_at=msg.finished_at,
        options=Options(promote=msg.options.promote, register=msg.options.register, registry_address=msg.options.registry_address,
                        base_dir=msg.options.base_dir),
        spec_yaml=msg.spec_yaml,
        progress=Progress(run=p.run, stage=p.stage, step=p.step, steps=p.steps, loss=p.loss, tokens_per_s=p.tokens_per_s,
                          last_event=p.last_event, runs_done=p.runs_done, events=p.events, dev=dict(p.dev)),
        error=msg.error,
        attempts=[Attempt(action=a.action, pid=a.pid, started_at=a.started_at, ended_at=a.ended_at,
                          exit_code=a.exit_code if a.HasField("exit_code") else None, outcome=a.outcome,
                          worker=a.worker) for a in msg.attempts],
        result=result, folder=msg.folder,
    )


def event_to_pb(seq: int, event: Mapping[str, Any]) -> tpb.JobEvent:
    msg = tpb.JobEvent(
        seq=seq, event=str(event.get("event", "")), time=_num(event.get("time")) or 0.0, run=str(event.get("run") or ""),
        stage=str(event.get("stage") or ""), json=json.dumps(event, ensure_ascii=False, default=str),
    )
    for key in ("step", "steps"):
        value = event.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            setattr(msg, key, value)
    _set_optional(msg, loss=_num(event.get("loss")), tokens_per_s=_num(event.get("tokens_per_s")))
    if event.get("event") == "eval":
        values = (event.get("summary") or {}).get("values") or {}
        for task, value in values.items():
            number = _num(value)
            if number is not None:
                msg.values[str(task)] = number
    return msg


def event_from_pb(msg: tpb.JobEvent) -> dict[str, Any]:
    """The event as the log has it, with its `seq`."""
    try:
        event = json.loads(msg.json) if msg.json else {}
    except ValueError:
        event = {}
    if not isinstance(event, dict):
        event = {}
    event.setdefault("event", msg.event)
    event["seq"] = msg.seq
    return event


__all__ = ["event_from_pb", "event_to_pb", "job_from_pb", "job_to_pb", "result_to_pb", "state_from_pb", "state_to_pb"]
