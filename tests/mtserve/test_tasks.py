"""Task definitions and catalogues: the hotel catalogue, the YAML round trip,
and one test per rule that refuses a bad definition."""

from __future__ import annotations

import copy

import pytest
import yaml

from mtserve.errors import NotFoundError, ValidationError
from mtserve.tasks import (
    Channel,
    InputKind,
    Taxonomy,
    TruncationPolicy,
    dump_catalogue,
    load_catalogue,
    parse_catalogue,
    parse_task,
)

GOOD = {
    "name": "rc-a",
    "instruction": "Did the hotel cancel the booking? Answer with one of {labels}.",
    "input_kind": "conversation",
    "taxonomy": "binary",
    "channels": ["call"],
    "labels": [{"name": "yes", "verbalizer": "yes"}, {"name": "no", "verbalizer": "no"}],
}


def task_with(**changes):
    data = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def refused(data, *fragments):
    with pytest.raises(ValidationError) as info:
        parse_task(data)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_good_task_parses():
    task = parse_task(GOOD)
    assert task.name == "rc-a" and task.taxonomy is Taxonomy.BINARY
    assert task.label_names == ("yes", "no") and task.channels == (Channel.CALL,)
    assert task.version is None


def test_hotel_catalogue_has_the_paper_tasks(hotel):
    expected = {
        "rc-a", "rc-i", "uc-a", "uc-i", "pg-a", "pg-i", "id", "csa", "nr-a", "nr-i",
        "hs", "idm", "csqr", "see", "rtc", "csc", "ec", "cs",
    }
    assert set(hotel.names) == expected
    for name in ("rc-a", "uc-a", "pg-a", "nr-a"):
        assert hotel.task(name).channels == (Channel.CALL,)
        assert hotel.task(name.replace("-a", "-i")).channels == (Channel.IM,)
    for name in ("id", "csa", "hs", "idm", "csqr", "see", "csc"):
        assert set(hotel.task(name).channels) == {Channel.CALL, Channel.IM}
    assert hotel.task("rtc").taxonomy is Taxonomy.MULTILABEL and hotel.task("rtc").input_kind is InputKind.TEXT
    assert hotel.task("csc").taxonomy is Taxonomy.MULTILABEL
    assert hotel.task("ec").taxonomy is Taxonomy.MULTICLASS and hotel.task("ec").channels == (Channel.EMAIL,)
    assert hotel.task("rtc").channels == (Channel.REVIEW,)
    assert [label.value for label in hotel.task("csqr").labels] == [1, 2, 3, 4]
    assert [label.value for label in hotel.task("see").labels] == [1, 2, 3, 4, 5]
    assert hotel.task("cs").taxonomy is Taxonomy.GENERATION and hotel.task("cs").labels == ()


def test_catalogue_yaml_round_trip(hotel, tmp_path):
    path = tmp_path / "hotel.yaml"
    dump_catalogue(hotel, path)
    assert load_catalogue(path) == hotel
    assert yaml.safe_load(dump_catalogue(hotel))["tasks"][0]["name"] == "rc-a"


def test_content_hash_ignores_version_but_not_content():
    a = parse_task(GOOD)
    assert a.content_hash() == a.with_version(7).content_hash()
    b = parse_task(task_with(instruction="Was the booking cancelled? Answer yes or no."))
    assert a.content_hash() != b.content_hash()


# -- one test per refusal ------------------------------------------------------------
def test_refuses_duplicate_label_names():
    refused(task_with(labels=[{"name": "yes", "verbalizer": "yes"}, {"name": "yes", "verbalizer": "y"}]),
            "labels[1].name", "duplicate label name", "'yes'")


def test_refuses_duplicate_verbalizers():
    refused(task_with(labels=[{"name": "a", "verbalizer": "Yes"}, {"name": "b", "verbalizer": "yes"}]),
            "labels[1].verbalizer", "duplicate verbalizer")


def test_refuses_empty_label_name():
    refused(task_with(labels=[{"name": " ", "verbalizer": "x"}, {"name": "no"}]), "labels[0].name", "must not be empty")


def test_refuses_empty_verbalizer():
    refused(task_with(labels=[{"name": "yes", "verbalizer": ""}, {"name": "no"}]), "labels[0].verbalizer", "must not be empty")


def test_refuses_empty_label_list():
    refused(task_with(labels=[]), "labels", "needs at least 2 labels")


def test_refuses_verbalizer_with_surrounding_space():
    refused(task_with(labels=[{"name": "yes", "verbalizer": " yes"}, {"name": "no"}]), "white space")


def test_refuses_unknown_taxonomy():
    refused(task_with(taxonomy="regression"), "taxonomy", "must be one of", "'regression'")


def test_refuses_ordinal_without_order():
    data = task_with(taxonomy="ordinal", labels=[{"name": "low"}, {"name": "mid"}, {"name": "high"}])
    refused(data, "labels[0].value", "needs a numeric value")


def test_refuses_ordinal_out_of_order():
    data = task_with(taxonomy="ordinal", labels=[{"name": "1", "value": 1}, {"name": "3", "value": 3}, {"name": "2", "value": 2}])
    refused(data, "labels[2].value", "strictly increasing")


def test_refuses_value_on_non_ordinal():
    refused(task_with(labels=[{"name": "yes", "value": 1}, {"name": "no"}]), "only ordinal labels carry a value")


def test_refuses_unknown_placeholder():
    refused(task_with(instruction="Classify {text} into {labels}."), "instruction", "placeholder(s) ['text'] that do not exist")


def test_refuses_unbalanced_braces():
    refused(task_with(instruction="Answer {labels"), "instruction", "not a valid template")


@pytest.mark.parametrize("name", ["RC-A", "1abc", "a", "x" * 65, "has space", "", None, "ünïcode"])
def test_refuses_bad_names(name):
    refused(task_with(name=name), "name", "must match")


def test_refuses_unknown_key():
    data = task_with()
    data["lables"] = []
    refused(data, "lables", "unknown key")


def test_refuses_unknown_channel_and_im_channel_mismatch():
    refused(task_with(channels=["fax"]), "channels[0]", "must be one of")
    refused(task_with(channels=["email"]), "conversation task applies to call and/or im only")


def test_refuses_binary_with_three_labels():
    refused(task_with(labels=["a", "b", "c"]), "exactly 2 labels")


def test_refuses_metric_of_other_taxonomy():
    refused(task_with(metric="rouge_l"), "metric", "allows metrics")


def test_refuses_generation_with_labels():
    refused(task_with(taxonomy="generation", metric="rouge_l", instruction="Summarize."), "must be empty for a generation task")
    refused(task_with(taxonomy="generation", metric="rouge_l", labels=None), "a generation task has no labels to list")


def test_refuses_threshold_out_of_range_and_on_single_label_tasks():
    refused(task_with(taxonomy="multilabel", labels=["a", "b"], threshold=1.5, metric="micro_f1"), "threshold", "strictly between 0 and 1")
    refused(task_with(threshold=0.5), "only multi-label tasks have a threshold")


def test_refuses_max_input_tokens_out_of_range():
    refused(task_with(max_input_tokens=3), "max_input_tokens", "between 16 and 131072")


def test_catalogue_refuses_duplicate_task_names():
    with pytest.raises(ValidationError, match=r"tasks\[1\].name: duplicate task name"):
        parse_catalogue({"catalogue": "x1", "tasks": [GOOD, GOOD]})


def test_catalogue_names_the_failing_task_path():
    with pytest.raises(ValidationError, match=r"cat.tasks\[0\]\(rc-a\).taxonomy"):
        parse_catalogue({"catalogue": "x1", "tasks": [task_with(taxonomy="nope")]}, source="cat")


def test_catalogue_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed")
    with pytest.raises(ValidationError, match="is not valid YAML"):
        load_catalogue(bad)
    with pytest.raises(ValidationError, match="cannot read file"):
        load_catalogue(tmp_path / "missing.yaml")


def test_unknown_task_lookup(hotel):
    with pytest.raises(NotFoundError, match="unknown task 'nope'"):
        hotel.task("nope")


def test_truncation_policy_most_specific_budget():
    policy = TruncationPolicy.from_list([
        {"input_kind": "conversation", "channel": "call", "max_tokens": 900},
        {"input_kind": "conversation", "max_tokens": 500},
    ])
    assert policy.budget_for(InputKind.CONVERSATION, Channel.CALL).max_tokens == 900
    assert policy.budget_for(InputKind.CONVERSATION, Channel.IM).max_tokens == 500
    assert policy.budget_for(InputKind.TEXT, None).max_tokens == 1024  # built-in default
    with pytest.raises(ValidationError, match="duplicate budget"):
        TruncationPolicy.from_list([{"input_kind": "text", "max_tokens": 100}, {"input_kind": "text", "max_tokens": 200}])


@pytest.mark.parametrize("instruction", ["Answer {labels:d}.", "Answer {labels:>10000000}.", "Answer {labels!r}."])
def test_format_specs_and_conversions_are_refused_at_registration(instruction):
    """They passed parsing and failed (or rendered ten million characters) at
    render time, inside a batch of other tasks' requests."""
    refused(task_with(instruction=instruction), "task(rc-a).instruction: placeholders take no format spec or conversion (write {labels}")


def test_an_instruction_that_renders_too_long_is_refused():
    refused(task_with(instruction="Decide. " * 600 + "Answer {labels}."), "task(rc-a).instruction: renders to", "at most 4000")
