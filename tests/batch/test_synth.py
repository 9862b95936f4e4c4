"""Tests for batch.synth: the SYNTHETIC hotel log generator."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batch import synth
from batch.logs import LogRecord, Reject, RejectCode, iter_records
from batch.synth import SynthDay, generate_day, label_rates, to_task_datasets, write_day
from mtserve.errors import ValidationError
from mtserve.inputs import Conversation, Text, input_from_dict
from mtserve.tasks import Channel, InputKind, Taxonomy, builtin_catalogue_path, load_catalogue

CATALOGUE = load_catalogue(builtin_catalogue_path("hotel"))
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def day1000() -> SynthDay:
    return generate_day("2024-05-01", 1000, seed=11)


@pytest.fixture(scope="module")
def day_zh() -> SynthDay:
    return generate_day(dt.date(2024, 5, 2), 300, seed=5, mix_chinese=True)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- determinism -------------------------------------------------------------------


def test_same_date_n_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    formats = ("jsonl", "jsonl.gz", "parquet")
    write_day(generate_day("2024-05-01", 120, 3, mix_chinese=True, bad_records=5), tmp_path / "a", formats=formats)
    write_day(generate_day("2024-05-01", 120, 3, mix_chinese=True, bad_records=5), tmp_path / "b", formats=formats)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(a) == 8 and a == b  # README, manifest, labels, emails, reviews, 3 log files
    write_day(generate_day("2024-05-01", 120, 4, mix_chinese=True, bad_records=5), tmp_path / "c", formats=formats)
    assert files(tmp_path / "c")["labels.jsonl"] != a["labels.jsonl"]


def test_item_i_does_not_depend_on_n() -> None:
    small, large = generate_day("2024-05-01", 30, 9), generate_day("2024-05-01", 60, 9)
    assert [c.record for c in small.conversations] == [c.record for c in large.conversations[:30]]
    assert [c.labels for c in small.conversations] == [c.labels for c in large.conversations[:30]]


def test_datasets_are_deterministic(tmp_path: Path, day_zh: SynthDay) -> None:
    to_task_datasets(day_zh, tmp_path / "a", seed=1)
    to_task_datasets(day_zh, tmp_path / "b", seed=1)
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_300_conversations_are_fast() -> None:
    start = time.perf_counter()
    generate_day("2024-05-03", 300, 1, mix_chinese=True)
    assert time.perf_counter() - start < 2.0


# -- records ---------------------------------------------------------------------------


def test_every_record_parses_as_a_model_input(day_zh: SynthDay) -> None:
    for c in day_zh.conversations:
        parsed = input_from_dict(c.record)
        assert isinstance(parsed, Conversation) and parsed.conversation_id == c.id
        dt.datetime.fromisoformat(c.record["started_at"])
    for item, channel in [*((e, Channel.EMAIL) for e in day_zh.emails), *((r, Channel.REVIEW) for r in day_zh.reviews)]:
        parsed = input_from_dict(item.record)
        assert isinstance(parsed, Text) and parsed.channel is channel
    synth.parse_all(day_zh)


def test_both_channels_and_all_speakers_occur(day_zh: SynthDay) -> None:
    assert Counter(c.record["channel"] for c in day_zh.conversations).keys() == {"call", "im"}
    speakers = {t["speaker"] for c in day_zh.conversations for t in c.record["turns"]}
    assert speakers == {"agent", "customer", "system"}


def test_call_transcripts_are_asr_style(day1000: SynthDay) -> None:
    calls = [c for c in day1000.conversations if c.record["channel"] == "call"]
    texts = [t["text"] for c in calls for t in c.record["turns"]]
    for text in texts:
        assert not re.search(r"[^\w\s]|_", text), text  # no punctuation, apostrophes included
        assert text == text.lower(), text
    words = Counter(w for text in texts for w in text.split())
    assert words["uh"] + words["um"] > 100  # fillers
    assert any(t.get("timestamp") is None for c in calls for t in c.record["turns"])


def test_im_turns_have_timestamps_punctuation_and_emoji(day1000: SynthDay) -> None:
    chats = [c for c in day1000.conversations if c.record["channel"] == "im"]
    for c in chats:
        stamps = [dt.datetime.fromisoformat(t["timestamp"]) for t in c.record["turns"]]
        assert stamps == sorted(stamps)
        assert stamps[0] > dt.datetime.fromisoformat(c.record["started_at"])
    texts = [t["text"] for c in chats for t in c.record["turns"]]
    assert sum("?" in t or "." in t for t in texts) > len(texts) / 2
    assert sum(bool(re.search(r"[\U0001F300-\U0001FAFF]", t)) for t in texts) > 100
    assert sum(len(t) for t in texts) / len(texts) < 80  # short turns


def test_agitation_is_visible_in_im_wording(day1000: SynthDay) -> None:
    for c in day1000.conversations:
        if c.record["channel"] != "im":
            continue
        customer = " ".join(t["text"] for t in c.record["turns"] if t["speaker"] == "customer").lower()
        level = c.facts.agitation
        markers = [m.lower() for m in synth.AGITATION[level]] + [m.lower() for m in synth.CUSTOMER_CLOSING[level]]
        assert any(m in customer for m in markers), (level, customer)


def test_mixed_chinese_only_when_asked(day_zh: SynthDay, day1000: SynthDay) -> None:
    def has_cjk(c: Any) -> bool:
        return any(CJK.search(t["text"]) for t in c.record["turns"])

    mixed = [c for c in day_zh.conversations if has_cjk(c)]
    assert 0.15 * len(day_zh.conversations) < len(mixed) < 0.5 * len(day_zh.conversations)
    assert all(c.record["metadata"]["language"] == "zh-en" for c in mixed)
    assert not any(has_cjk(c) for c in day1000.conversations)


def test_distractors_occur_on_negatives(day1000: SynthDay) -> None:
    """Look-alike negatives exist, so labels are not a keyword lookup."""
    rc_no = [c for c in day1000.conversations if c.labels.get("rc-i") == "no" or c.labels.get("rc-a") == "no"]
    not_cancelled = [c for c in rc_no if any("not cancelled" in t["text"].lower() or "nothing was cancelled" in t["text"].lower() for t in c.record["turns"])]
    assert len(not_cancelled) > 10
    rude_customer = [c for c in day1000.conversations if c.labels["id"] == "no" and "id" in c.facts.distractors]
    assert len(rude_customer) > 10


# -- labels ----------------------------------------------------------------------------------


def check_label(task_name: str, label: Any) -> None:
    task = CATALOGUE.task(task_name)
    if task.taxonomy is Taxonomy.GENERATION:
        assert isinstance(label, str) and label.strip()
    elif task.taxonomy is Taxonomy.MULTILABEL:
        assert isinstance(label, list) and len(set(label)) == len(label)
        assert set(label) <= set(task.label_names)
        assert label == [n for n in task.label_names if n in label]  # catalogue order
    else:
        assert isinstance(label, str) and label in task.label_names


def test_every_label_is_valid_for_its_task(day_zh: SynthDay) -> None:
    for item in [*day_zh.conversations, *day_zh.emails, *day_zh.reviews]:
        for task, label in item.labels.items():
            check_label(task, label)


def test_labels_jsonl_rows_are_valid(tmp_path: Path, day_zh: SynthDay) -> None:
    paths = write_day(day_zh, tmp_path)
    rows = [json.loads(x) for x in paths.labels.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == sum(len(i.labels) for i in [*day_zh.conversations, *day_zh.emails, *day_zh.reviews])
    for row in rows:
        assert row["synthetic"] is True
        assert ("conversation_id" in row) != ("id" in row)
        if row["task"] == "cs":
            assert "label" not in row
            check_label("cs", row["target"])
        else:
            assert "target" not in row
            check_label(row["task"], row["label"])


def test_tasks_are_routed_by_channel(day1000: SynthDay) -> None:
    for c in day1000.conversations:
        channel = Channel(c.record["channel"])
        expected = [t.name for t in CATALOGUE.tasks if t.applies_to(InputKind.CONVERSATION, channel)]
        assert list(c.labels) == expected
        if channel is Channel.IM:
            assert not {"rc-a", "uc-a", "pg-a", "nr-a"} & set(c.labels)
            assert {"rc-i", "uc-i", "pg-i", "nr-i", "id", "csa", "hs", "idm", "csqr", "see", "csc", "cs"} <= set(c.labels)
        else:
            assert not {"rc-i", "uc-i", "pg-i", "nr-i"} & set(c.labels)
            assert {"rc-a", "csc", "csqr", "see", "cs"} <= set(c.labels)
        assert not {"ec", "rtc"} & set(c.labels)
    assert all(list(e.labels) == ["ec"] for e in day1000.emails)
    assert all(list(r.labels) == ["rtc"] for r in day1000.reviews)


def test_binary_positive_rates_are_learnable(day1000: SynthDay) -> None:
    rates = label_rates(day1000)
    binary = [t.name for t in CATALOGUE.tasks if t.taxonomy is Taxonomy.BINARY]
    assert len(binary) == 12
    for name in binary:
        assert 0.15 <= rates[name]["yes"] <= 0.5, (name, rates[name])
    assert rates["rc-a"]["n"] + rates["rc-i"]["n"] == 1000


def test_every_class_occurs(day1000: SynthDay) -> None:
    rates = label_rates(day1000)
    for name in ("csqr", "see", "csc", "ec", "rtc"):
        for label in CATALOGUE.task(name).label_names:
            assert rates[name][label] > 0.02, (name, label, rates[name])


def test_labels_follow_the_facts(day1000: SynthDay) -> None:
    for c in day1000.conversations:
        f = c.facts
        suffix = "a" if f.channel is Channel.CALL else "i"
        assert c.labels[f"rc-{suffix}"] == ("yes" if f.hotel_cancelled else "no")
        assert c.labels["id"] == ("yes" if f.insult else "no")
        assert c.labels["hs"] == ("yes" if f.shuttle else "no")
        assert c.labels["csqr"] == str(f.quality) and c.labels["see"] == str(f.agitation)
        if f.insult:
            assert f.quality == 1


def test_summary_is_one_sentence(day1000: SynthDay) -> None:
    for c in day1000.conversations:
        target = c.labels["cs"]
        assert target.startswith("The guest ") and target.endswith(".") and target.count(".") == 1, target


# -- synthetic marker ------------------------------------------------------------------------


def test_marked_synthetic_everywhere(tmp_path: Path, day_zh: SynthDay) -> None:
    paths = write_day(day_zh, tmp_path, formats=("jsonl", "parquet"))
    assert all(synth.SYNTHETIC in p.name for p in paths.log_files)
    assert all(c.record["metadata"]["synthetic"] is True for c in day_zh.conversations)
    for path in (paths.emails, paths.reviews, paths.labels):
        assert all(json.loads(x)["synthetic"] is True for x in path.read_text(encoding="utf-8").splitlines())
    readme = paths.readme.read_text(encoding="utf-8")
    assert "SYNTHETIC" in readme and "claims" in readme
    assert json.loads(paths.manifest.read_text(encoding="utf-8"))["synthetic"] is True
    records = [r for r in iter_records(paths.logs) if isinstance(r, LogRecord)]
    assert len(records) == 300 and all(r.conversation.metadata["synthetic"] is True for r in records)

    counts = to_task_datasets(day_zh, tmp_path / "data")
    assert "SYNTHETIC" in (tmp_path / "data" / "README.txt").read_text(encoding="utf-8")
    for task in counts:
        for split in synth.SPLITS:
            for x in (tmp_path / "data" / task / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                ex = json.loads(x)
                assert ex["id"].startswith("SYN-")
                if "turns" in ex:
                    assert ex["metadata"]["synthetic"] is True


# -- with the log reader -------------------------------------------------------------------


@pytest.mark.parametrize("formats", [("jsonl",), ("jsonl", "jsonl.gz", "parquet"), ("parquet",)])
def test_reader_reads_the_day_with_zero_rejects(tmp_path: Path, formats: tuple[str, ...]) -> None:
    day = generate_day("2024-05-01", 200, 2, mix_chinese=True)
    paths = write_day(day, tmp_path, formats=formats)
    out = list(iter_records(paths.logs))
    assert not [r for r in out if isinstance(r, Reject)]
    assert [r.conversation_id for r in out] == [c.id for c in day.conversations]
    for r, c in zip(out, day.conversations):
        assert isinstance(r, LogRecord)
        assert r.to_dict() == c.record


@pytest.mark.parametrize("formats", [("jsonl",), ("jsonl", "jsonl.gz", "parquet"), ("parquet",)])
@pytest.mark.parametrize("k", [1, 8, 13])
def test_injected_bad_records_give_exactly_k_rejects(tmp_path: Path, formats: tuple[str, ...], k: int) -> None:
    day = generate_day("2024-05-01", 100, 2, bad_records=k)
    out = list(iter_records(write_day(day, tmp_path, formats=formats).logs))
    rejects = [r for r in out if isinstance(r, Reject)]
    assert len(rejects) == k
    assert Counter(r.code.value for r in rejects) == Counter(day.bad_records)
    assert [r.conversation_id for r in out if isinstance(r, LogRecord)] == [c.id for c in day.conversations]


def test_rewriting_a_day_leaves_no_stale_parts(tmp_path: Path) -> None:
    write_day(generate_day("2024-05-01", 30, 2), tmp_path, formats=("jsonl", "parquet"))
    paths = write_day(generate_day("2024-05-01", 30, 2), tmp_path, formats=("jsonl.gz",))
    assert sorted(p.name for p in paths.logs.iterdir()) == ["SYNTHETIC-2024-05-01-part-00.jsonl.gz"]
    assert len(list(iter_records(paths.logs))) == 30


def test_bad_records_with_no_conversations(tmp_path: Path) -> None:
    day = generate_day("2024-05-01", 0, 2, bad_records=8)
    out = list(iter_records(write_day(day, tmp_path).logs))
    assert len(out) == 8 and all(isinstance(r, Reject) for r in out)
    assert Counter(r.code for r in out)[RejectCode.MISSING_ID] == 2  # the duplicate has nothing to copy


# -- training data ---------------------------------------------------------------------------------


def test_task_datasets(tmp_path: Path, day1000: SynthDay, day_zh: SynthDay) -> None:
    counts = to_task_datasets([day1000, day_zh], tmp_path, splits=(0.8, 0.1, 0.1), seed=3)
    assert list(counts) == CATALOGUE.names  # every task of the catalogue gets data
    split_of: dict[str, str] = {}
    for task_name, per_split in counts.items():
        task = CATALOGUE.task(task_name)
        total = sum(per_split.values())
        assert 0.7 < per_split["train"] / total < 0.9
        for split in synth.SPLITS:
            lines = (tmp_path / task_name / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            assert len(lines) == per_split[split]
            for x in lines:
                ex = json.loads(x)
                if ex["id"] not in split_of:  # parse each input once (the same input recurs under every task)
                    assert input_from_dict(ex).kind is task.input_kind
                if task.is_generation:
                    check_label(task_name, ex["target"])
                else:
                    check_label(task_name, ex["label"])
                # One conversation is in the same split for every task.
                assert split_of.setdefault(ex["id"], split) == split


def test_task_datasets_load_cleanly_with_the_trainer(tmp_path: Path, day_zh: SynthDay) -> None:
    from trainer.data import check_no_bad_lines, load_task_data

    counts = to_task_datasets(day_zh, tmp_path, seed=2)
    for name, per_split in counts.items():
        splits = load_task_data(CATALOGUE.task(name), tmp_path / name)
        check_no_bad_lines(splits.values())
        assert {s: len(d) for s, d in splits.items()} == per_split


def test_task_datasets_refuse_bad_splits_and_repeated_days(tmp_path: Path, day_zh: SynthDay) -> None:
    with pytest.raises(ValidationError):
        to_task_datasets(day_zh, tmp_path, splits=(0.8, 0.3, 0.1))
    with pytest.raises(ValidationError):
        to_task_datasets([day_zh, day_zh], tmp_path)


def test_bad_arguments() -> None:
    with pytest.raises(ValidationError):
        generate_day("May 1st", 10, 1)
    with pytest.raises(ValidationError):
        generate_day("2024-05-01", -1, 1)
    with pytest.raises(ValidationError):
        write_day(generate_day("2024-05-01", 1, 1), "/tmp/never", formats=("csv",))
