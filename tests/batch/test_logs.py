"""Tests for batch.logs: the day-log readers, chunk planning and rejects."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.logs import (
    Chunk,
    LogRecord,
    Reject,
    RejectCode,
    iter_records,
    list_day,
    plan_chunks,
    plan_day,
    read_chunk,
    read_rejects,
    write_rejects,
)
from mtserve.errors import PreconditionError, ValidationError
from mtserve.inputs import Conversation, Speaker


def rec(cid: Any = "c1", channel: Any = "call", **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "conversation_id": cid,
        "channel": channel,
        "started_at": "2024-05-01T09:00:00+08:00",
        "turns": [
            {"speaker": "agent", "text": "hello how can i help"},
            {"speaker": "customer", "text": "i need an invoice please"},
        ],
        "metadata": {"queue": "vip"},
    }
    out.update(over)
    return out


def line(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_bytes(b"".join(r if isinstance(r, bytes) else line(r) for r in records))
    return path


def write_parquet(path: Path, records: list[dict[str, Any]], row_group_size: int | None = None) -> Path:
    rows = [dict(r, metadata=json.dumps(r.get("metadata") or {})) for r in records]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def results(folder: Path) -> list[LogRecord | Reject]:
    return list(iter_records(folder))


def only_reject(folder: Path) -> Reject:
    rejects = [r for r in results(folder) if isinstance(r, Reject)]
    assert len(rejects) == 1, rejects
    return rejects[0]


# -- good records ------------------------------------------------------------------


def test_reads_a_valid_record_with_id_metadata_and_started_at(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", "im", turns=[{"speaker": "customer", "text": "hi 🙂", "timestamp": "2024-05-01T09:00:05+08:00"}])])
    [r] = results(tmp_path)
    assert isinstance(r, LogRecord)
    assert (r.source, r.line, r.conversation_id, r.started_at) == ("a.jsonl", 1, "c1", "2024-05-01T09:00:00+08:00")
    assert isinstance(r.conversation, Conversation)
    assert r.conversation.metadata == {"queue": "vip"}
    assert r.conversation.turns[0].speaker is Speaker.CUSTOMER
    assert r.conversation.turns[0].timestamp == "2024-05-01T09:00:05+08:00"
    assert r.to_dict()["started_at"] == r.started_at


def test_blank_lines_are_skipped_and_line_numbers_are_file_lines(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1"), b"\n", b"   \r\n", rec("c2")])
    assert [(r.line, r.conversation_id) for r in results(tmp_path)] == [(1, "c1"), (4, "c2")]


def test_crlf_and_bom_are_tolerated(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + line(rec("c1")).rstrip(b"\n") + b"\r\n" + line(rec("c2")))
    assert [r.conversation_id for r in results(tmp_path)] == ["c1", "c2"]


def test_other_files_are_ignored_and_listed(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1")])
    (tmp_path / "README.txt").write_text("notes")
    (tmp_path / "a.jsonl.tmp").write_text("partial")
    (tmp_path / "sub").mkdir()
    day = list_day(tmp_path)
    assert day.files == ("a.jsonl",)
    assert day.ignored == ("README.txt", "a.jsonl.tmp", "sub")
    assert plan_day(tmp_path, 10).ignored == day.ignored
    assert [r.conversation_id for r in results(tmp_path)] == ["c1"]


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        list(iter_records(tmp_path / "missing"))


# -- each kind of bad record ------------------------------------------------------------


def test_missing_id(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec(None), rec("c2")])
    r = only_reject(tmp_path)
    assert (r.code, r.line, r.conversation_id) == (RejectCode.MISSING_ID, 1, None)


def test_empty_id(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("  "), rec("c2")])
    assert only_reject(tmp_path).code is RejectCode.MISSING_ID


def test_unknown_channel(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", "fax"), rec("c2", "email")])
    rejects = results(tmp_path)
    assert [(r.code, r.conversation_id) for r in rejects] == [
        (RejectCode.UNKNOWN_CHANNEL, "c1"),
        (RejectCode.UNKNOWN_CHANNEL, "c2"),  # a valid channel, but not one a conversation comes from
    ]
    assert "fax" in rejects[0].reason


def test_no_turns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", turns=[]), rec("c2")])
    r = only_reject(tmp_path)
    assert (r.code, r.conversation_id) == (RejectCode.NO_TURNS, "c1")


def test_missing_turns(tmp_path: Path) -> None:
    record = rec("c1")
    del record["turns"]
    write_jsonl(tmp_path / "a.jsonl", [record])
    assert only_reject(tmp_path).code is RejectCode.NO_TURNS


def test_empty_text(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", turns=[{"speaker": "agent", "text": "hi"}, {"speaker": "customer", "text": "  "}])])
    r = only_reject(tmp_path)
    assert (r.code, r.conversation_id) == (RejectCode.EMPTY_TEXT, "c1")
    assert "turns[1]" in r.reason


def test_bad_speaker(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", turns=[{"speaker": "bot", "text": "hi"}])])
    r = only_reject(tmp_path)
    assert (r.code, r.conversation_id) == (RejectCode.BAD_SPEAKER, "c1")
    assert "bot" in r.reason


def test_unhashable_values_are_rejects_not_crashes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", ["call"]), rec("c2", turns=[{"speaker": {"x": 1}, "text": "hi"}]), rec(["c3"])])
    assert [r.code for r in results(tmp_path)] == [RejectCode.UNKNOWN_CHANNEL, RejectCode.BAD_SPEAKER, RejectCode.MISSING_ID]


def test_bad_turn(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", turns=["hello"])])
    assert only_reject(tmp_path).code is RejectCode.BAD_TURN


def test_invalid_json(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1"), b'{"conversation_id": "c2", "channel": "call", \n', rec("c3")])
    r = only_reject(tmp_path)
    assert (r.code, r.line) == (RejectCode.INVALID_JSON, 2)
    assert r.conversation_id == "c2"  # sniffed from the broken line, to help whoever reads the rejects


def test_not_an_object(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [[1, 2], rec("c2")])
    assert only_reject(tmp_path).code is RejectCode.NOT_AN_OBJECT


def test_bad_or_missing_started_at(tmp_path: Path) -> None:
    no_start = rec("c2")
    del no_start["started_at"]
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", started_at="yesterday"), no_start])
    assert [r.code for r in results(tmp_path)] == [RejectCode.BAD_STARTED_AT] * 2


def test_bad_metadata(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", metadata=[1, 2, 3])])
    assert only_reject(tmp_path).code is RejectCode.BAD_METADATA


def test_invalid_utf8_line_in_the_middle_spoils_only_that_line(tmp_path: Path) -> None:
    bad = line(rec("c2")).replace(b"invoice", b"inv\xff\xfeoice")
    write_jsonl(tmp_path / "a.jsonl", [rec("c1"), bad, rec("c3"), rec("c4", "im")])
    out = results(tmp_path)
    assert [type(r).__name__ for r in out] == ["LogRecord", "Reject", "LogRecord", "LogRecord"]
    r = out[1]
    assert (r.code, r.line, r.conversation_id) == (RejectCode.INVALID_UTF8, 2, "c2")
    assert [x.conversation_id for x in out if isinstance(x, LogRecord)] == ["c1", "c3", "c4"]


def test_duplicate_id_within_a_file_first_wins(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1"), rec("c2"), rec("c1", "im")])
    out = results(tmp_path)
    assert isinstance(out[0], LogRecord) and out[0].conversation.channel.value == "call"
    r = out[2]
    assert (r.code, r.line, r.conversation_id) == (RejectCode.DUPLICATE_ID, 3, "c1")
    assert "a.jsonl line 1" in r.reason


def test_duplicates_across_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1"), rec("c2")])
    write_parquet(tmp_path / "b.parquet", [rec("c3"), rec("c1")])
    write_jsonl(tmp_path / "c.jsonl", [rec("c2"), rec("c4")])
    out = results(tmp_path)
    dups = [r for r in out if isinstance(r, Reject)]
    assert [(d.source_file, d.line, d.conversation_id) for d in dups] == [("b.parquet", 2, "c1"), ("c.jsonl", 1, "c2")]
    assert "a.jsonl line 1" in dups[0].reason and "a.jsonl line 2" in dups[1].reason
    assert [r.conversation_id for r in out if isinstance(r, LogRecord)] == ["c1", "c2", "c3", "c4"]


def test_an_invalid_first_copy_does_not_claim_the_id(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1", turns=[]), rec("c1")])
    out = results(tmp_path)
    assert isinstance(out[0], Reject) and out[0].code is RejectCode.NO_TURNS
    assert isinstance(out[1], LogRecord)


def test_a_bad_record_never_stops_the_job(tmp_path: Path) -> None:
    bad = [rec(None), rec("b1", "fax"), rec("b2", turns=[]), b"not json\n", b"\xff\xfe\n", rec("b3", turns=[{"speaker": "x", "text": "y"}])]
    good = [rec(f"g{i}") for i in range(5)]
    mixed: list[Any] = [x for pair in zip(good, bad) for x in pair] + good[len(bad):]
    write_jsonl(tmp_path / "a.jsonl", mixed)
    out = results(tmp_path)
    assert [r.conversation_id for r in out if isinstance(r, LogRecord)] == [f"g{i}" for i in range(5)]
    assert sum(isinstance(r, Reject) for r in out) == 5  # zip stops at the shorter list: 5 bad ones


# -- formats --------------------------------------------------------------------------------


def test_gzip(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(line(rec("c1")) + b"{oops\n" + line(rec("c2")))
    out = results(tmp_path)
    assert [(type(r).__name__, r.line) for r in out] == [("LogRecord", 1), ("Reject", 2), ("LogRecord", 3)]


def test_truncated_gzip_keeps_every_complete_line(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(line(rec(f"c{i}")) for i in range(200)))
    cut = data[: len(data) * 2 // 3]
    (tmp_path / "a.jsonl.gz").write_bytes(cut)
    complete = zlib.decompressobj(31).decompress(cut).count(b"\n")  # what survives the cut
    out = results(tmp_path)
    assert [r.conversation_id for r in out[:-1]] == [f"c{i}" for i in range(complete)]
    last = out[-1]
    assert isinstance(last, Reject) and last.code is RejectCode.UNREADABLE_FILE
    assert last.line == complete + 1


def test_multi_member_gzip_and_empty_gzip(tmp_path: Path) -> None:
    # `cat a.gz b.gz > c.gz` is a valid gzip file: both members are read.
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(line(rec("c1"))) + gzip.compress(line(rec("c2")) + line(rec("c3"))))
    (tmp_path / "b.jsonl.gz").write_bytes(b"")
    assert [r.conversation_id for r in results(tmp_path)] == ["c1", "c2", "c3"]


def test_not_gzip_at_all(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl.gz", [rec("c1")])  # plain text behind a .gz name
    write_jsonl(tmp_path / "b.jsonl", [rec("c2")])
    out = results(tmp_path)
    assert isinstance(out[0], Reject) and out[0].code is RejectCode.UNREADABLE_FILE
    assert isinstance(out[1], LogRecord)


def test_parquet(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", [rec("c1"), rec("c2", "im", turns=[]), rec("c3", "im")])
    out = results(tmp_path)
    assert [(type(r).__name__, r.line) for r in out] == [("LogRecord", 1), ("Reject", 2), ("LogRecord", 3)]
    assert out[0].conversation.metadata == {"queue": "vip"}  # JSON-string metadata column


def test_parquet_with_struct_metadata_and_timestamp_column(tmp_path: Path) -> None:
    import datetime as dt

    table = pa.table(
        {
            "conversation_id": ["c1"],
            "channel": ["im"],
            "started_at": pa.array([dt.datetime(2024, 5, 1, 9, 0, tzinfo=dt.UTC)], pa.timestamp("s", tz="UTC")),
            "turns": [[{"speaker": "customer", "text": "hi", "timestamp": None}]],
            "metadata": [{"synthetic": True}],
        }
    )
    pq.write_table(table, tmp_path / "a.parquet")
    [r] = results(tmp_path)
    assert isinstance(r, LogRecord)
    assert r.started_at == "2024-05-01T09:00:00+00:00"
    assert r.conversation.metadata == {"synthetic": True}


def test_parquet_invalid_utf8_row_rejects_only_that_row(tmp_path: Path) -> None:
    ids = pa.array([b"c1", b"c2", b"c3"], pa.binary())
    texts = pa.array([b"fine", b"bro\xffken", b"fine too"], pa.binary())
    # Build string arrays without validation, as a buggy writer would.
    ids_s = pa.Array.from_buffers(pa.string(), 3, ids.buffers())
    texts_s = pa.Array.from_buffers(pa.string(), 3, texts.buffers())
    speakers = pa.array(["customer"] * 3)
    turns = pa.ListArray.from_arrays(pa.array([0, 1, 2, 3], pa.int32()), pa.StructArray.from_arrays([speakers, texts_s], ["speaker", "text"]))
    table = pa.table({"conversation_id": ids_s, "channel": ["call"] * 3, "started_at": ["2024-05-01T00:00:00"] * 3, "turns": turns})
    pq.write_table(table, tmp_path / "a.parquet")
    out = results(tmp_path)
    assert [type(r).__name__ for r in out] == ["LogRecord", "Reject", "LogRecord"]
    assert (out[1].code, out[1].line, out[1].conversation_id) == (RejectCode.INVALID_UTF8, 2, "c2")


def test_corrupt_parquet_is_one_reject_for_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"PAR1 this is not really parquet")
    write_jsonl(tmp_path / "b.jsonl", [rec("c1")])
    out = results(tmp_path)
    assert len(out) == 2
    r = out[0]
    assert isinstance(r, Reject)
    assert (r.source_file, r.line, r.code) == ("a.parquet", None, RejectCode.UNREADABLE_FILE)
    assert isinstance(out[1], LogRecord)


def test_mixed_formats_in_one_folder_are_read_in_sorted_order(tmp_path: Path) -> None:
    write_parquet(tmp_path / "b.parquet", [rec("p1"), rec("p2", "im")])
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(line(rec("g1")))
    write_jsonl(tmp_path / "c.jsonl", [rec("j1"), rec("j2", "im")])
    (tmp_path / "notes.csv").write_text("x")
    out = results(tmp_path)
    assert [(r.source, r.conversation_id) for r in out] == [
        ("a.jsonl.gz", "g1"), ("b.parquet", "p1"), ("b.parquet", "p2"), ("c.jsonl", "j1"), ("c.jsonl", "j2"),
    ]


# -- chunks -------------------------------------------------------------------------------


def messy_day(folder: Path) -> None:
    """Three formats, bad records, blank lines, duplicates within and across files,
    a corrupt file and several Parquet row groups."""
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "a.jsonl", [rec("c1"), rec("c2"), b"\n", b"{bad\n", rec("c3", "im"), rec("c1"), b"\xff\n", rec("c4")])
    with gzip.open(folder / "b.jsonl.gz", "wb") as f:
        f.write(b"".join(line(rec(f"g{i}")) for i in range(7)) + line(rec("c3")) + b"\n" + line(rec("g8", turns=[])))
    write_parquet(folder / "c.parquet", [rec(f"p{i}") for i in range(9)] + [rec("g2"), rec("p10", "fax"), rec("p11")], row_group_size=4)
    (folder / "d.parquet").write_bytes(b"garbage")
    data = gzip.compress(b"".join(line(rec(f"t{i}")) for i in range(40)))
    (folder / "d2.jsonl.gz").write_bytes(data[: len(data) * 2 // 3])  # truncated: the tail is one reject
    write_jsonl(folder / "e.jsonl", [rec("p3"), rec("e1", "im")])


def summary(results_: list[LogRecord | Reject]) -> list[tuple[Any, ...]]:
    return [
        (r.source, r.line, r.conversation_id, "ok") if isinstance(r, LogRecord) else (r.source_file, r.line, r.conversation_id, r.code.value, r.reason)
        for r in results_
    ]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 10, 1000])
def test_chunks_cover_every_record_exactly_once(tmp_path: Path, chunk_size: int) -> None:
    messy_day(tmp_path)
    whole = summary(results(tmp_path))
    plan = plan_day(tmp_path, chunk_size)
    chunks = plan.chunks
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.count == chunk_size for c in chunks[:-1]) and 1 <= chunks[-1].count <= chunk_size
    assert plan.records == len(whole) == sum(c.count for c in chunks)
    # Each chunk round-trips through JSON (how it travels to a worker) and is
    # read on its own, in any order: together they give the single pass exactly.
    by_chunk = {}
    for chunk in reversed(chunks):
        again = Chunk.from_dict(json.loads(json.dumps(chunk.to_dict())))
        assert again == chunk
        by_chunk[chunk.index] = summary(list(read_chunk(again)))
    assert [x for i in sorted(by_chunk) for x in by_chunk[i]] == whole
    assert plan.duplicates == sum(1 for x in whole if x[3] == "duplicate_id") == 4
    assert plan.rejects == sum(1 for x in whole if x[3] != "ok")


def test_plan_is_deterministic(tmp_path: Path) -> None:
    messy_day(tmp_path)
    assert plan_chunks(tmp_path, 4) == plan_chunks(tmp_path, 4)


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        plan_chunks(tmp_path, 0)


def test_empty_day(tmp_path: Path) -> None:
    assert plan_chunks(tmp_path, 5) == []
    assert results(tmp_path) == []


def test_read_chunk_refuses_a_file_changed_since_planning(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec("c1"), rec("c2")])
    [chunk] = plan_chunks(tmp_path, 10)
    write_jsonl(tmp_path / "a.jsonl", [rec("c1"), rec("c2"), rec("c3")])
    with pytest.raises(PreconditionError):
        list(read_chunk(chunk))


def test_jsonl_chunks_seek_to_their_offset(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [rec(f"c{i}") for i in range(10)])
    chunks = plan_chunks(tmp_path, 3)
    assert [s.offset > 0 for c in chunks for s in c.spans] == [False, True, True, True]
    assert [r.conversation_id for r in read_chunk(chunks[2])] == ["c6", "c7", "c8"]


# -- rejects file -----------------------------------------------------------------------------


def test_write_rejects(tmp_path: Path) -> None:
    messy_day(tmp_path / "day")
    rejects = [r for r in iter_records(tmp_path / "day") if isinstance(r, Reject)]
    out = tmp_path / "out" / "rejects.jsonl"
    assert write_rejects(rejects, out) == len(rejects) > 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert set(rows[0]) == {"source_file", "line", "conversation_id", "code", "reason"}
    assert all(row["reason"] for row in rows)
    assert read_rejects(out) == rejects
    assert [p.name for p in out.parent.iterdir()] == ["rejects.jsonl"]  # no temporary file left behind
