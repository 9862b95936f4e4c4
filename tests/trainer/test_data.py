"""Loading a task's JSONL data: every kind of bad line is reported by file and
line number, the other lines still load, nothing is dropped silently."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from mtserve.errors import ValidationError
from mtserve.inputs import Conversation, Speaker, Text, TextPair
from mtserve.tasks import Channel, parse_catalogue, parse_task
from trainer.data import DEV_SELECTION, BadLine, Example, check_no_bad_lines, example_id, load_split, load_task_data, sample_dev
from trainer.toy import TOY_CATALOGUE

CALL = {"channel": "call", "turns": [{"speaker": "customer", "text": "my booking was cancelled"}, {"speaker": "agent", "text": "sorry"}]}
PAIR_TASK = parse_task(
    {
        "name": "nli",
        "instruction": "Does text B follow from text A? Answer {labels}.",
        "input_kind": "text_pair",
        "taxonomy": "binary",
        "channels": ["review"],
        "labels": ["yes", "no"],
    }
)


def write(path: Path, *lines: str | bytes) -> Path:
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode("utf-8")) + b"\n" for ln in lines)
    path.write_bytes(data)
    return path


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def load_one(task, tmp_path: Path, *lines) -> tuple[list[Example], list[BadLine], Path]:
    path = write(tmp_path / "train.jsonl", *lines)
    split = load_split(task, path, "train")
    return split.examples, split.bad_lines, path


def assert_bad(bad: list[BadLine], path: Path, line: int, *words: str) -> None:
    assert [b.line for b in bad] == [line], bad
    text = str(bad[0])
    assert text.startswith(f"{path}:{line}: "), text
    for word in words:
        assert word in text, text


GOOD = dumps({"text": "Please move my booking", "channel": "email", "label": "booking_change"})


# -- good files --------------------------------------------------------------------


def test_text_file_loads_with_ids_and_hash(hotel, tmp_path):
    ec = hotel.task("ec")
    path = write(tmp_path / "train.jsonl", dumps({"id": "a", "text": "Invoice please", "label": "invoice"}), GOOD, "")
    split = load_split(ec, path, "train")
    assert split.ok and len(split) == 2
    assert split.examples[0] == Example("a", Text("Invoice please"), "invoice")
    assert split.examples[1].input == Text("Please move my booking", Channel.EMAIL)
    assert split.examples[1].id == example_id(json.loads(GOOD))  # stable hash of the content
    assert split.sha256 == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert split.label_counts() == {"invoice": 1, "booking_change": 1}


def test_hash_id_ignores_formatting():
    a = {"text": "x", "label": "y"}
    assert example_id(a) == example_id({"label": "y", "text": "x"}) == example_id({**a, "id": "given"})
    assert example_id(a) != example_id({"text": "x", "label": "z"})


def test_conversation_and_pair_files(hotel, tmp_path):
    examples, bad, _ = load_one(hotel.task("rc-a"), tmp_path, dumps({**CALL, "conversation_id": "c1", "label": "yes"}))
    assert not bad and isinstance(examples[0].input, Conversation)
    assert examples[0].input.turns[0].speaker is Speaker.CUSTOMER and examples[0].input.conversation_id == "c1"
    examples, bad, _ = load_one(PAIR_TASK, tmp_path, dumps({"text": "a", "text_b": "b", "label": "no"}))
    assert not bad and examples[0].input == TextPair("a", "b") and examples[0].gold == "no"


def test_multilabel_file(hotel, tmp_path):
    rtc = hotel.task("rtc")
    examples, bad, _ = load_one(
        rtc,
        tmp_path,
        dumps({"text": "Dirty and noisy", "label": ["noise", "cleanliness"]}),
        dumps({"text": "Fine stay", "label": []}),  # none applies: a valid answer
    )
    assert not bad
    assert examples[0].label == ("cleanliness", "noise")  # task order
    assert examples[1].gold == ()


def test_generation_file(hotel, tmp_path):
    cs = hotel.task("cs")
    examples, bad, _ = load_one(cs, tmp_path, dumps({**CALL, "target": "Booking cancelled; agent apologised."}))
    assert not bad and examples[0].label is None and examples[0].gold == "Booking cancelled; agent apologised."


# -- one test per kind of bad line -------------------------------------------------------


def test_unknown_label(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("ec"), tmp_path, GOOD, dumps({"text": "hi", "label": "refund"}))
    assert_bad(bad, path, 2, "unknown label 'refund'", "booking_change")


def test_unknown_label_in_multilabel_list(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("rtc"), tmp_path, dumps({"text": "hi", "label": ["noise", "wifi"]}))
    assert_bad(bad, path, 1, "unknown label 'wifi'")


def test_multilabel_needs_a_list(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("rtc"), tmp_path, dumps({"text": "hi", "label": "noise"}))
    assert_bad(bad, path, 1, "list of label names")


def test_single_label_task_refuses_a_list(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("ec"), tmp_path, dumps({"text": "hi", "label": ["invoice"]}))
    assert_bad(bad, path, 1, "one label name")


def test_missing_label(hotel, tmp_path):
    _, bad, _path = load_one(hotel.task("ec"), tmp_path, GOOD, GOOD.replace("email", "email", 1), dumps({"text": "hi"}))
    # line 2 duplicates line 1 (same content -> same hash id): also reported
    assert [b.line for b in bad] == [2, 3]
    assert "duplicate id" in bad[0].reason and "line 1" in bad[0].reason
    assert "missing field 'label'" in bad[1].reason


def test_missing_target(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("cs"), tmp_path, dumps(CALL))
    assert_bad(bad, path, 1, "missing field 'target'")


def test_label_on_generation_task(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("cs"), tmp_path, dumps({**CALL, "target": "x", "label": "yes"}))
    assert_bad(bad, path, 1, "'label' does not belong")


def test_missing_input_field(tmp_path):
    _, bad, path = load_one(PAIR_TASK, tmp_path, dumps({"text": "a", "text_b": "b", "label": "no"}), dumps({"text": "a", "label": "no"}))
    assert_bad(bad, path, 2, "missing field 'text_b'")


def test_missing_channel_of_conversation(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("rc-a"), tmp_path, dumps({"turns": CALL["turns"], "label": "yes"}))
    assert_bad(bad, path, 1, "missing field 'channel'")


def test_empty_text(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("ec"), tmp_path, dumps({"text": "   ", "label": "other"}))
    assert_bad(bad, path, 1, "must not be empty")


def test_empty_turn_text(hotel, tmp_path):
    turns = [{"speaker": "customer", "text": ""}]
    _, bad, path = load_one(hotel.task("rc-a"), tmp_path, dumps({"channel": "call", "turns": turns, "label": "yes"}))
    assert_bad(bad, path, 1, "turns[0].text", "must not be empty")


def test_empty_target(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("cs"), tmp_path, dumps({**CALL, "target": " "}))
    assert_bad(bad, path, 1, "target must be a non-empty string")


def test_wrong_input_kind(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("ec"), tmp_path, GOOD, dumps({**CALL, "label": "other"}))
    assert_bad(bad, path, 2, "wrong input kind", "reads text input", "conversation")


def test_channel_not_served(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("rc-a"), tmp_path, dumps({**CALL, "channel": "im", "label": "yes"}))
    assert_bad(bad, path, 1, "channel 'im' is not served by task 'rc-a'")


def test_text_channel_not_served(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("ec"), tmp_path, dumps({"text": "x", "channel": "review", "label": "other"}))
    assert_bad(bad, path, 1, "channel 'review' is not served")


def test_unknown_field(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("ec"), tmp_path, dumps({"text": "x", "lable": "other", "label": "other"}))
    assert_bad(bad, path, 1, "unknown field(s) ['lable']")


def test_invalid_json(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("ec"), tmp_path, GOOD, '{"text": "x", "label": "other"')
    assert_bad(bad, path, 2, "invalid JSON")


def test_not_an_object(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("ec"), tmp_path, '["x", "other"]')
    assert_bad(bad, path, 1, "JSON object")


def test_bad_id(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("ec"), tmp_path, dumps({"id": "", "text": "x", "label": "other"}))
    assert_bad(bad, path, 1, "id must be")


def test_duplicate_id(hotel, tmp_path):
    lines = [dumps({"id": "7", "text": t, "label": "other"}) for t in ("a", "b")]
    _, bad, path = load_one(hotel.task("ec"), tmp_path, *lines)
    assert_bad(bad, path, 2, "duplicate id '7' (first on line 1)")


def test_invalid_utf8_in_the_middle_spoils_only_its_line(hotel, tmp_path):
    ec = hotel.task("ec")
    middle = b'{"text": "caf\xe9 au lait", "label": "other"}'  # latin-1 byte, not UTF-8
    examples, bad, path = load_one(ec, tmp_path, dumps({"text": "我的发票", "label": "invoice"}), middle, dumps({"text": "last", "label": "payment"}))
    assert_bad(bad, path, 2, "invalid UTF-8")
    assert [e.gold for e in examples] == ["invoice", "payment"]
    assert examples[0].input.text == "我的发票"


def test_every_line_is_accounted_for(hotel, tmp_path):
    ec = hotel.task("ec")
    lines = [GOOD, "{", dumps({"text": "", "label": "x"}), dumps({"text": "ok", "label": "other"})]
    examples, bad, _ = load_one(ec, tmp_path, *lines)
    assert len(examples) + len(bad) == len(lines)


# -- folders and the refusal --------------------------------------------------------------


def test_load_task_data_splits(hotel, tmp_path):
    ec = hotel.task("ec")
    write(tmp_path / "train.jsonl", GOOD)
    write(tmp_path / "dev.jsonl", dumps({"text": "x", "label": "other"}))
    data = load_task_data(ec, tmp_path)
    assert sorted(data) == ["dev", "train"]  # no test file: absent, not an error
    assert data["dev"].split == "dev" and data["dev"].task == "ec"


def test_missing_train_is_an_error(hotel, tmp_path):
    write(tmp_path / "dev.jsonl", GOOD)
    with pytest.raises(ValidationError, match="needs a train split"):
        load_task_data(hotel.task("ec"), tmp_path)


def test_check_no_bad_lines_lists_file_line_and_count(hotel, tmp_path):
    ec = hotel.task("ec")
    write(tmp_path / "train.jsonl", GOOD, *["{"] * 30)
    write(tmp_path / "dev.jsonl", dumps({"text": "x", "label": "nope"}))
    data = load_task_data(ec, tmp_path)
    check_no_bad_lines([])  # nothing to refuse
    with pytest.raises(ValidationError) as info:
        check_no_bad_lines(data.values(), limit=5)
    message = str(info.value)
    assert "31 bad line(s) in 2 file(s)" in message
    assert f"{tmp_path / 'train.jsonl'}:2: invalid JSON" in message
    assert "... and 26 more" in message


def test_bad_metadata_is_a_bad_line_not_a_crash(hotel, tmp_path):
    _, bad, path = load_one(hotel.task("rc-a"), tmp_path, dumps({**CALL, "metadata": 5, "label": "yes"}))
    assert_bad(bad, path, 1, "invalid input")


# -- dev sets that are samples (sample_dev) ------------------------------------------------

TOY = parse_catalogue(TOY_CATALOGUE)


def dev_examples(task: str, labels, prefix: str = "d") -> list[Example]:
    """One example per entry of `labels` (a label, a label tuple, or None for generation)."""
    out = []
    for i, label in enumerate(labels):
        if label is None:
            out.append(Example(f"{prefix}{i}", Text(f"Stay {i}.", Channel.REVIEW), None, target=f"stay {i}"))
        else:
            out.append(Example(f"{prefix}{i}", Text(f"Stay {i}.", Channel.REVIEW), label))
    return out


def rank(task: str, ex: Example) -> str:
    return hashlib.sha256(f"dev/{task}/{ex.id}".encode()).hexdigest()


def labels_of(sample: list[Example]) -> Counter:
    return Counter(ex.label for ex in sample)


def test_dev_sample_does_not_depend_on_the_file_order():
    task = TOY.task("topic")
    examples = dev_examples("topic", ["room"] * 40 + ["food"] * 35 + ["staff"] * 25)
    shuffled = list(examples)
    random.Random(3).shuffle(shuffled)
    for cap in (None, 10, 37):
        a, sel_a = sample_dev(task, examples, cap)
        b, sel_b = sample_dev(task, shuffled, cap)
        assert [ex.id for ex in a] == [ex.id for ex in b]  # the same examples, in the same order
        assert sel_a == sel_b
    # and the sample is in rank order (sha256 of "dev/<task>/<id>")
    sample, _ = sample_dev(task, shuffled, 10)
    assert [rank("topic", ex) for ex in sample] == sorted(rank("topic", ex) for ex in sample)


def test_a_file_sorted_by_label_gives_every_label_in_proportion():
    task = TOY.task("sentiment")
    examples = dev_examples("sentiment", ["negative"] * 50 + ["positive"] * 50)
    sample, sel = sample_dev(task, examples, 20)
    assert labels_of(sample) == {"negative": 10, "positive": 10}  # the file's first 20 would be all negative
    assert sel.method == DEV_SELECTION == "stratified-hash-v1"
    assert (sel.cap, sel.available, sel.selected) == (20, 100, 20)
    assert sel.label_counts == {"positive": 10, "negative": 10}
    assert sel.warnings == ()
    # each stratum contributes its lowest-ranked examples
    negatives = sorted((ex for ex in examples if ex.label == "negative"), key=lambda ex: rank("sentiment", ex))[:10]
    assert {ex.id for ex in sample if ex.label == "negative"} == {ex.id for ex in negatives}
    assert sel.to_dict() == {"method": "stratified-hash-v1", "cap": 20, "available": 100, "selected": 20,
                             "label_counts": {"positive": 10, "negative": 10}, "warnings": []}


def test_imbalanced_labels_are_shared_out_by_largest_remainder():
    sentiment, topic = TOY.task("sentiment"), TOY.task("topic")
    sample, _ = sample_dev(sentiment, dev_examples("sentiment", ["positive"] * 90 + ["negative"] * 10), 10)
    assert labels_of(sample) == {"positive": 9, "negative": 1}
    # quotas 4.7 / 3.3 / 2.0: the largest remainder (room) gets the tenth example
    sample, _ = sample_dev(topic, dev_examples("topic", ["room"] * 47 + ["food"] * 33 + ["staff"] * 20), 10)
    assert labels_of(sample) == {"room": 5, "food": 3, "staff": 2}
    # quotas 4.5 / 3.5 / 2.0: equal remainders, the tie goes by label name (food < room)
    sample, _ = sample_dev(topic, dev_examples("topic", ["room"] * 45 + ["food"] * 35 + ["staff"] * 20), 10)
    assert labels_of(sample) == {"room": 4, "food": 4, "staff": 2}


def test_every_label_is_kept_while_the_cap_allows_it():
    topic = TOY.task("topic")
    sample, sel = sample_dev(topic, dev_examples("topic", ["room"] * 98 + ["food"] + ["staff"]), 10)
    assert labels_of(sample) == {"room": 8, "food": 1, "staff": 1} and sel.selected == 10  # at least one each, trimmed to the cap
    # a cap below the number of labels: proportional only, never over the cap
    sample, _ = sample_dev(topic, dev_examples("topic", ["room"] * 98 + ["food"] + ["staff"]), 2)
    assert labels_of(sample) == {"room": 2}


def test_one_class_and_too_few_examples_are_warned_about():
    sentiment = TOY.task("sentiment")
    _, sel = sample_dev(sentiment, dev_examples("sentiment", ["positive"] * 30), None)
    assert sel.warnings == (
        "dev set of 'sentiment' holds one class only (['positive']): its metric cannot tell a model from a constant answer",
        "dev set of 'sentiment' has fewer than 10 examples of some labels (negative=0)",
    )
    _, sel = sample_dev(sentiment, dev_examples("sentiment", ["positive"] * 95 + ["negative"] * 5), None)
    assert sel.warnings == ("dev set of 'sentiment' has fewer than 10 examples of some labels (negative=5)",)
    assert not any("one class" in w for w in sel.warnings)
    _, sel = sample_dev(sentiment, dev_examples("sentiment", ["positive"] * 95 + ["negative"] * 5), None, min_per_label=5)
    assert sel.warnings == ()
    # the warning is about the sample, not the file: a cap of 20 keeps one negative of 5
    sample, sel = sample_dev(sentiment, dev_examples("sentiment", ["positive"] * 95 + ["negative"] * 5), 20, min_per_label=2)
    assert labels_of(sample) == {"positive": 19, "negative": 1}
    assert sel.warnings == ("dev set of 'sentiment' has fewer than 2 examples of some labels (negative=1)",)


def test_no_cap_keeps_everything_in_rank_order():
    task = TOY.task("sentiment")
    examples = dev_examples("sentiment", ["positive", "negative"] * 15)
    for cap in (None, 30, 1000):
        sample, sel = sample_dev(task, examples, cap)
        assert [ex.id for ex in sample] == [ex.id for ex in sorted(examples, key=lambda ex: rank("sentiment", ex))]
        assert sel.selected == sel.available == 30 and sel.cap == cap
    # the rank includes the task's name: another task orders the same ids differently
    other = sorted(examples, key=lambda ex: rank("topic", ex))
    assert [ex.id for ex in sample] != [ex.id for ex in other]


def test_multilabel_strata_are_label_sets():
    task = TOY.task("aspects")
    sets = [("price",)] * 40 + [("price", "noise")] * 40 + [()] * 20
    sample, sel = sample_dev(task, dev_examples("aspects", sets), 10)
    assert Counter(ex.label for ex in sample) == {("price",): 4, ("price", "noise"): 4, (): 2}
    assert sel.label_counts == {"price": 8, "noise": 4, "view": 0}  # per label, over the sample
    # a label absent from the sample is warned about, but not as "one class" (multi-label)
    assert sel.warnings == ("dev set of 'aspects' has fewer than 10 examples of some labels (price=8, noise=4, view=0)",)
    _, sel = sample_dev(task, dev_examples("aspects", [("price",)] * 20), None)
    assert not any("one class" in w for w in sel.warnings)


def test_generation_dev_sets_are_one_stratum_without_warnings():
    task = TOY.task("headline")
    examples = dev_examples("headline", [None] * 25)
    sample, sel = sample_dev(task, examples, 7)
    assert [ex.id for ex in sample] == [ex.id for ex in sorted(examples, key=lambda ex: rank("headline", ex))[:7]]
    assert sel.warnings == () and sel.label_counts == {} and sel.selected == 7
