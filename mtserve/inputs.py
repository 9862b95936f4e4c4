"""The inputs a task reads: a text, a pair of texts, or a conversation with
speaker-tagged turns from one channel (a phone call's ASR transcript or an
instant-messaging chat)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mtserve.errors import ValidationError
from mtserve.tasks import CONVERSATION_CHANNELS, Channel, InputKind, Task

MAX_TEXT_CHARS = 1_000_000  # a hard sanity bound; the token budget is the real limit


class Speaker(StrEnum):
    AGENT = "agent"
    CUSTOMER = "customer"
    SYSTEM = "system"


@dataclass(frozen=True)
class Turn:
    speaker: Speaker
    text: str
    timestamp: str | None = None


@dataclass(frozen=True)
class Text:
    text: str
    channel: Channel | None = None
    kind = InputKind.TEXT


@dataclass(frozen=True)
class TextPair:
    text: str
    text_b: str
    channel: Channel | None = None
    kind = InputKind.TEXT_PAIR


@dataclass(frozen=True)
class Conversation:
    channel: Channel
    turns: tuple[Turn, ...]
    conversation_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    kind = InputKind.CONVERSATION


Input = Text | TextPair | Conversation


def _check_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(where, "must be a string", value)
    if not value.strip():
        raise ValidationError(where, "must not be empty", value)
    if len(value) > MAX_TEXT_CHARS:
        raise ValidationError(where, f"has {len(value)} characters, at most {MAX_TEXT_CHARS} are accepted", len(value), show_value=False)
    return value


def validate_input(inp: Input, where: str = "input") -> Input:
    """Check an input built in code (the dict and protobuf readers call this too)."""
    if isinstance(inp, Text):
        _check_text(inp.text, f"{where}.text")
    elif isinstance(inp, TextPair):
        _check_text(inp.text, f"{where}.text")
        _check_text(inp.text_b, f"{where}.text_b")
    elif isinstance(inp, Conversation):
        if inp.channel not in CONVERSATION_CHANNELS:
            raise ValidationError(f"{where}.channel", "a conversation's channel must be call or im", getattr(inp.channel, "value", inp.channel))
        if not inp.turns:
            raise ValidationError(f"{where}.turns", "a conversation needs at least one turn", 0)
        for i, turn in enumerate(inp.turns):
            if not isinstance(turn.speaker, Speaker):
                raise ValidationError(f"{where}.turns[{i}].speaker", "must be agent, customer or system", turn.speaker)
            _check_text(turn.text, f"{where}.turns[{i}].text")
    else:
        raise ValidationError(where, "must be a text, a text pair or a conversation", type(inp).__name__)
    return inp


def check_task_accepts(task: Task, inp: Input, where: str = "input") -> None:
    """A task reads one input kind; a conversation must come from a channel the task serves."""
    if inp.kind is not task.input_kind:
        raise ValidationError(
            where, f"task {task.name!r} reads {task.input_kind.value} input", inp.kind.value
        )
    channel = getattr(inp, "channel", None)
    if task.input_kind is InputKind.CONVERSATION and channel not in task.channels:
        raise ValidationError(
            f"{where}.channel",
            f"task {task.name!r} applies to channels {[c.value for c in task.channels]}",
            getattr(channel, "value", channel),
        )


def input_from_dict(data: Mapping[str, Any], where: str = "input") -> Input:
    """Parse the JSON form used by data files, logs and the CLI:
    {"text": ...} | {"text": ..., "text_b": ...} | {"channel": ..., "turns": [...]}."""
    if not isinstance(data, Mapping):
        raise ValidationError(where, "must be a JSON object", type(data).__name__)
    channel = data.get("channel")
    if channel is not None:
        try:
            channel = Channel(channel)
        except ValueError:
            raise ValidationError(f"{where}.channel", f"must be one of {[c.value for c in Channel]}", channel) from None
    if "turns" in data:
        raw_turns = data["turns"]
        if not isinstance(raw_turns, list):
            raise ValidationError(f"{where}.turns", "must be a list", raw_turns)
        turns = []
        for i, t in enumerate(raw_turns):
            at = f"{where}.turns[{i}]"
            if not isinstance(t, Mapping):
                raise ValidationError(at, "must be an object with speaker and text", t)
            speaker_value = t.get("speaker")
            try:
                if speaker_value is None:  # Speaker(None) raises the same ValueError
                    raise ValueError("no speaker")
                speaker = Speaker(speaker_value)
            except ValueError:
                raise ValidationError(f"{at}.speaker", "must be agent, customer or system", t.get("speaker")) from None
            ts = t.get("timestamp")
            turns.append(Turn(speaker=speaker, text=_check_text(t.get("text"), f"{at}.text"), timestamp=None if ts is None else str(ts)))
        if channel is None:
            raise ValidationError(f"{where}.channel", "a conversation needs a channel (call or im)", None, show_value=False)
        conv_id = data.get("conversation_id")
        return validate_input(
            Conversation(
                channel=channel,
                turns=tuple(turns),
                conversation_id=None if conv_id is None else str(conv_id),
                metadata=dict(data.get("metadata") or {}),
            ),
            where,
        )
    if "text" not in data:
        raise ValidationError(where, "needs 'text' (and 'text_b' for a pair) or 'turns'", sorted(data))
    if data.get("text_b") is not None:
        return validate_input(TextPair(text=data["text"], text_b=data["text_b"], channel=channel), where)
    return validate_input(Text(text=data["text"], channel=channel), where)


def input_to_dict(inp: Input) -> dict[str, Any]:
    if isinstance(inp, Conversation):
        out: dict[str, Any] = {}
        if inp.conversation_id is not None:
            out["conversation_id"] = inp.conversation_id
        out["channel"] = inp.channel.value
        out["turns"] = [
            {"speaker": t.speaker.value, "text": t.text, **({"timestamp": t.timestamp} if t.timestamp else {})}
            for t in inp.turns
        ]
        if inp.metadata:
            out["metadata"] = dict(inp.metadata)
        return out
    out = {"text": inp.text}
    if isinstance(inp, TextPair):
        out["text_b"] = inp.text_b
    if inp.channel is not None:
        out["channel"] = inp.channel.value
    return out
