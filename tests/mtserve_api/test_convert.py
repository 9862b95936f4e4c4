"""protobuf <-> domain conversions (mtserve_api/convert.py): lossless round
trips, and validation with the catalogue's own rules and messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mtserve.engine import LabelScore, Prediction
from mtserve.errors import ValidationError
from mtserve.inputs import Input, input_from_dict
from mtserve.predictions import Answer, Timing
from mtserve.records import (
    CheckpointRecord,
    PolicyRecord,
    RegistryState,
    Route,
    TaskRecord,
    TaskStatus,
)
from mtserve.tasks import TruncationPolicy
from mtserve_api import convert
from mtserve_api.v1 import common_pb2 as cpb

SAMPLES = Path(__file__).resolve().parents[2] / "mtserve" / "samples"


def sample(name: str) -> Input:
    return input_from_dict(json.loads((SAMPLES / f"{name}.json").read_text(encoding="utf-8")), name)



def test_every_hotel_task_round_trips(hotel):
    for task in hotel.tasks:
        assert convert.task_from_pb(convert.task_to_pb(task)) == task
        versioned = task.with_version(3)
        assert convert.task_from_pb(convert.task_to_pb(versioned), keep_version=True) == versioned
        # a version sent by a caller is the registry's to assign: dropped
        assert convert.task_from_pb(convert.task_to_pb(versioned)).version is None


def test_policy_and_inputs_round_trip(hotel):
    record = PolicyRecord(hotel.truncation, "hotel")
    assert convert.policy_from_pb(convert.policy_to_pb(record)) == record
    for name in ("call-cancelled", "im-invoice", "email", "review"):
        inp = sample(name)
        assert convert.input_from_pb(convert.input_to_pb(inp)) == inp


def test_prediction_round_trips():
    p = Prediction("csqr", 2, "3", ("3",), (LabelScore("1", 0.1), LabelScore("3", 0.9)), expected_value=2.8, prompt_tokens=90, truncated=True)
    answer = convert.prediction_from_pb(convert.prediction_to_pb(Answer(p, "ck", Timing(1.5, 20.0))))
    assert answer == Answer(p, "ck", Timing(1.5, 20.0))
    gen = Prediction("cs", 1, None, (), (), text="a summary")
    assert convert.prediction_from_pb(convert.prediction_to_pb(Answer(gen, "ck"))).prediction == gen


def test_registry_state_round_trips(hotel):
    state = RegistryState(
        revision=7,
        tasks=(TaskRecord(hotel.task("rc-a").with_version(2), TaskStatus.RETIRED, 2, "t"),),
        routes=(Route("rc-a", 2, "ck", "t", "why"),),
        checkpoints=(CheckpointRecord("ck", "/p", "full", "{}", "ab" * 32, "t"),),
        policy=PolicyRecord(TruncationPolicy(), "x"),
    )
    assert convert.watch_event_from_pb(convert.watch_event_to_pb(state, snapshot=True)) == (True, state)
    change = dataclasses.replace(state, policy=None)
    assert convert.watch_event_from_pb(convert.watch_event_to_pb(change, snapshot=False)) == (False, change)
    assert RegistryState.from_dict(state.to_dict()) == state


def _task(hotel, name="csqr", **edits):
    msg = convert.task_to_pb(hotel.task(name))
    for key, value in edits.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda m: setattr(m, "name", "Bad Name"), "task.name: must match ^[a-z][a-z0-9_-]{1,63}$ (got 'Bad Name')"),
        (lambda m: setattr(m, "taxonomy", 0), "task(csqr).taxonomy: must be one of binary, ordinal, multiclass, multilabel, generation (got None)"),
        (lambda m: setattr(m, "taxonomy", 42), "task.taxonomy: unknown enum value; allowed: TAXONOMY_BINARY"),
        (lambda m: m.channels.append(9), "task.channels[2]: unknown enum value"),
        (lambda m: setattr(m, "instruction", "  "), "task(csqr).instruction: must not be empty"),
        (lambda m: setattr(m, "instruction", "Rate {stars}"), "uses placeholder(s) ['stars'] that do not exist"),
        (lambda m: m.labels[1].ClearField("value"), "task(csqr).labels[1].value: an ordinal label needs a numeric value"),
        (lambda m: setattr(m.labels[1], "verbalizer", "1"), "task(csqr).labels[1].verbalizer: duplicate verbalizer"),
        (lambda m: setattr(m, "max_input_tokens", 3), "task(csqr).max_input_tokens: must be between 16 and 131072 (got 3)"),
        (lambda m: setattr(m, "threshold", 0.5), "task(csqr).threshold: only multi-label tasks have a threshold"),
    ],
    ids=["name", "no-taxonomy", "unknown-taxonomy", "unknown-channel", "empty-instruction", "placeholder", "ordinal-value", "dup-verbalizer",
         "max-tokens", "threshold"],
)
def test_invalid_task_messages_name_the_field_rule_and_value(hotel, mutate, expected):
    msg = convert.task_to_pb(hotel.task("csqr"))
    mutate(msg)
    with pytest.raises(ValidationError) as info:
        convert.task_from_pb(msg)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "msg, expected",
    [
        (cpb.Input(), "input: must hold one of text, text_pair or conversation"),
        (cpb.Input(text=cpb.Text(text="")), "input.text.text: must not be empty (got '')"),
        (cpb.Input(text_pair=cpb.TextPair(text="a", text_b=" ")), "input.text_pair.text_b: must not be empty"),
        (cpb.Input(conversation=cpb.Conversation(turns=[cpb.Turn(speaker=1, text="hi")])), "input.conversation.channel: a conversation needs a channel"),
        (cpb.Input(conversation=cpb.Conversation(channel=3, turns=[cpb.Turn(speaker=1, text="hi")])),
         "input.conversation.channel: a conversation's channel must be call or im (got 'email')"),
        (cpb.Input(conversation=cpb.Conversation(channel=1)), "input.conversation.turns: a conversation needs at least one turn (got 0)"),
        (cpb.Input(conversation=cpb.Conversation(channel=1, turns=[cpb.Turn(text="hi")])),
         "input.conversation.turns[0].speaker: must be agent, customer or system"),
        (cpb.Input(text=cpb.Text(text="hi", channel=17)), "input.text.channel: unknown enum value"),
    ],
    ids=["no-kind", "empty-text", "empty-text-b", "no-channel", "text-channel", "no-turns", "no-speaker", "unknown-channel"],
)
def test_invalid_inputs_name_the_problem(msg, expected):
    with pytest.raises(ValidationError) as info:
        convert.input_from_pb(msg)
    assert expected in str(info.value)
