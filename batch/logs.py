"""Readers for one day's conversation logs (the input of the nightly batch).

A day is a folder of log files, read in sorted file-name order:

* ``*.jsonl``      one JSON object per line (UTF-8);
* ``*.jsonl.gz``   the same, gzip-compressed;
* ``*.parquet``    one row per conversation, same columns.

Any other entry (README.txt, sub-folders, ``.tmp`` files) is ignored and
listed in ``DayFiles.ignored`` so an operator can see it was skipped.

A conversation record::

    {"conversation_id": "c-1", "channel": "call" | "im",
     "started_at": "2024-05-01T09:12:00+08:00",          # ISO-8601
     "turns": [{"speaker": "agent" | "customer" | "system",
                "text": "...", "timestamp": "..."}],   # timestamp optional
     "metadata": {...}}                                  # optional object

In Parquet, ``turns`` is a list of structs and ``metadata`` a struct, a map or
a JSON string (writers without a fixed metadata schema store it as JSON);
``started_at`` may be a string or a timestamp column.

Every record becomes either a `LogRecord` (a validated
`mtserve.inputs.Conversation` plus where it came from and when it started) or
a `Reject` naming the file, the line (JSONL) or row (Parquet, 1-based), the
conversation id when it is known, a reason code and a readable reason. A bad
record never stops the job and never takes a good record down with it: JSONL
is read as bytes line by line and each line decoded strictly on its own, so
one invalid UTF-8 line costs that line only. A file that cannot be opened at
all (a corrupt Parquet footer, a permission error) is one reject for the
file, with ``line=None``.

Duplicates: a conversation id may appear once per day. The first *valid*
occurrence in read order (sorted files, then lines) wins; every later valid
record with that id is rejected with a reason naming where the first one is.
An invalid record never claims an id, so a broken first copy followed by a
good second copy keeps the good one (nothing good is dropped).

Chunks: `plan_day` / `plan_chunks` make one planning pass over the whole day
(the same code path as `iter_records`) and cut the stream of records into
chunks of ``chunk_size`` records. A `Chunk` lists (file, start, stop) spans of
line/row numbers, the byte offset where each JSONL span starts (so a worker
seeks instead of re-reading the file head), and - the day-wide part - the
positions inside the chunk that the planning pass found to be duplicates,
each with the location of the winning first occurrence. `read_chunk` re-reads
exactly its spans, validates them with the same code, and turns the marked
positions into duplicate rejects. Because the duplicate decision was taken
once, over the whole day, in read order, concatenating `read_chunk` over all
chunks gives exactly the results of `iter_records`, whatever the chunk size
and in whatever order the workers run. Each span also records the file's
size and mtime; if the file changed since planning, `read_chunk` raises
`PreconditionError` (re-plan the day) instead of silently reading other
records.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from mtserve.errors import PreconditionError, ValidationError
from mtserve.inputs import Conversation, Speaker, input_from_dict, input_to_dict
from mtserve.tasks import CONVERSATION_CHANNELS

log = logging.getLogger(__name__)

JSONL, JSONL_GZ, PARQUET = "jsonl", "jsonl.gz", "parquet"
FILE_LEVEL = 0  # the position of a reject that concerns a whole file


class RejectCode(StrEnum):
    """Why a record was rejected; stable strings for counting in reports."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_ID = "missing_id"
    UNKNOWN_CHANNEL = "unknown_channel"
    BAD_STARTED_AT = "bad_started_at"
    NO_TURNS = "no_turns"
    BAD_TURN = "bad_turn"
    BAD_SPEAKER = "bad_speaker"
    EMPTY_TEXT = "empty_text"
    BAD_METADATA = "bad_metadata"
    INVALID_RECORD = "invalid_record"  # anything input_from_dict refuses that the checks above missed
    DUPLICATE_ID = "duplicate_id"
    UNREADABLE_FILE = "unreadable_file"  # the whole file (line None) or the rest of it from `line` on


@dataclass(frozen=True)
class LogRecord:
    """A valid conversation from the log, with where it was read."""

    source: str  # file name inside the day folder
    line: int  # 1-based line (JSONL) or row (Parquet)
    conversation: Conversation
    started_at: str  # ISO-8601, as given (a Parquet timestamp is rendered with isoformat)

    @property
    def conversation_id(self) -> str:
        assert self.conversation.conversation_id is not None  # the reader rejects records without one
        return self.conversation.conversation_id

    def to_dict(self) -> dict[str, Any]:
        """The log record again (the reader's input format)."""
        out = input_to_dict(self.conversation)
        out["started_at"] = self.started_at
        return out


@dataclass(frozen=True)
class Reject:
    source_file: str
    line: int | None  # None: the whole file
    conversation_id: str | None
    reason: str
    code: RejectCode = RejectCode.INVALID_RECORD

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_file": self.source_file,
            "line": self.line,
            "conversation_id": self.conversation_id,
            "code": self.code.value,
            "reason": self.reason,
        }


RecordResult = LogRecord | Reject


# -- the folder --------------------------------------------------------------


def log_format(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".jsonl.gz"):
        return JSONL_GZ
    if lower.endswith(".jsonl"):
        return JSONL
    if lower.endswith(".parquet"):
        return PARQUET
    return None


@dataclass(frozen=True)
class DayFiles:
    folder: Path
    files: tuple[str, ...]  # log files, in read order
    ignored: tuple[str, ...]  # everything else in the folder


def list_day(folder: str | Path) -> DayFiles:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValidationError("folder", "is not a directory", str(folder))
    files: list[str] = []
    ignored: list[str] = []
    # Sorted by name so every planner and worker sees the same order, which is
    # what makes "first occurrence wins" well defined.
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        (files if entry.is_file() and log_format(entry.name) else ignored).append(entry.name)
    if ignored:
        log.warning("%s: ignoring %d entries that are not log files: %s", folder, len(ignored), ignored)
    return DayFiles(folder=folder, files=tuple(files), ignored=tuple(ignored))


# -- raw items: one per record slot in a file ----------------------------------


@dataclass(frozen=True)
class _Bad:
    code: RejectCode
    reason: str
    conversation_id: str | None = None


@dataclass(frozen=True)
class _Item:
    pos: int  # 1-based line/row; FILE_LEVEL for "the file could not be opened"
    offset: int  # byte offset of the line in the (decompressed) stream; 0 for Parquet
    payload: Any  # a parsed JSON value / Parquet row dict, or _Bad


_ID_RE = re.compile(r'"conversation_id"\s*:\s*"((?:[^"\\]|\\.){1,200})"')


def _sniff_id(text: str) -> str | None:
    """Best-effort id from a line that did not parse, so the reject names it."""
    match = _ID_RE.search(text)
    if not match:
        return None
    try:
        return json.loads(f'"{match.group(1)}"')
    except ValueError:
        return match.group(1)


def _parse_line(raw: bytes, first: bool) -> Any:
    if first and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM some exporters write
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Bad(RejectCode.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}", _sniff_id(raw.decode("utf-8", "replace")))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return _Bad(RejectCode.INVALID_JSON, f"invalid JSON ({exc.msg}, column {exc.colno})", _sniff_id(text))


_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's "expect a gzip header" mode
_READ_SIZE = 1 << 16


def _gunzip(f: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of a gzip file (members concatenated, as gzip
    allows), yielded as soon as they are decompressed. Unlike GzipFile, which
    loses its whole read buffer when the stream turns out to be truncated,
    this hands out every byte before the damage, so a cut-off file keeps all
    its complete lines. Raises EOFError if truncated, zlib.error if corrupt."""
    d = zlib.decompressobj(_GZIP_WBITS)
    empty = True
    while block := f.read(_READ_SIZE):
        empty = False
        while block:
            if d.eof:
                if not block.strip(b"\x00"):  # zero padding after the last member, as some tools write
                    break
                d = zlib.decompressobj(_GZIP_WBITS)  # the next member
            out = d.decompress(block)
            if out:
                yield out
            block = d.unused_data if d.eof else b""
    if not d.eof and not empty:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")


def _lines(chunks: Iterable[bytes], skip: int) -> Iterator[bytes]:
    """Split a byte stream into lines (each keeps its b"\\n"), after dropping
    the first `skip` bytes (a chunk's start offset)."""
    buf = bytearray()
    for chunk in chunks:
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        scan = len(buf)
        buf += chunk
        begin = 0
        while (nl := buf.find(b"\n", scan)) != -1:
            yield bytes(buf[begin : nl + 1])
            begin = scan = nl + 1
        del buf[:begin]
    if buf:
        yield bytes(buf)  # a last line without a newline


def _iter_jsonl(path: Path, gz: bool, start: int, stop: int | None, offset: int) -> Iterator[_Item]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - entered with `with f:` below, after the open error is reported
    except OSError as exc:
        yield _Item(FILE_LEVEL, 0, _Bad(RejectCode.UNREADABLE_FILE, f"cannot open file: {exc}"))
        return
    pos = start
    with f:
        try:
            if gz:
                # Decompress from the start even for a later chunk (gzip has no
                # random access), but only split and parse lines from `offset` on.
                raw_lines: Iterable[bytes] = _lines(_gunzip(f), offset)
            else:
                f.seek(offset)
                raw_lines = f
            for raw in raw_lines:
                if stop is not None and pos >= stop:
                    return
                line = raw.rstrip(b"\r\n")
                if line.strip():  # blank lines are not records
                    yield _Item(pos, offset, _parse_line(line, pos == 1))
                pos += 1
                offset += len(raw)
        except (OSError, EOFError, zlib.error) as exc:
            # A truncated or corrupt gzip stream, or a read error: everything
            # read so far stands, the rest of the file is one reject at the
            # first line that could not be read.
            if stop is None or pos < stop:
                where = f"from line {pos} on" if pos > 1 else "from the start"
                yield _Item(pos, offset, _Bad(RejectCode.UNREADABLE_FILE, f"file unreadable {where}: {exc}"))


def _plain(value: Any) -> Any:
    """Arrow's Python values as JSON-like values (binary columns decode strictly)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):  # a map column's (key, value) pairs
        return tuple(_plain(v) for v in value)
    return value


def _parquet_rows(table: Any) -> list[Any]:
    """Rows of an Arrow table; a row whose strings are not valid UTF-8 becomes
    a _Bad for that row only (to_pylist fails for the whole batch otherwise)."""
    try:
        return table.to_pylist()
    except UnicodeDecodeError:
        pass
    rows: list[Any] = []
    for i in range(table.num_rows):
        try:
            rows.append(table.slice(i, 1).to_pylist()[0])
        except UnicodeDecodeError as exc:
            conv_id = None
            if "conversation_id" in table.column_names:
                try:
                    conv_id = table.column("conversation_id").slice(i, 1).to_pylist()[0]
                except UnicodeDecodeError:
                    pass
            rows.append(_Bad(RejectCode.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start} of a string value", conv_id))
    return rows


def _iter_parquet(path: Path, start: int, stop: int | None) -> Iterator[_Item]:
    import pyarrow.parquet as pq  # imported here: JSONL-only days should not pay for pyarrow

    try:
        pf = pq.ParquetFile(path)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        yield _Item(FILE_LEVEL, 0, _Bad(RejectCode.UNREADABLE_FILE, f"not a readable Parquet file: {exc}"))
        return
    first = 1
    for group, size in enumerate(sizes):
        lo, hi = first, first + size  # rows [lo, hi) of the file, 1-based
        first = hi
        if hi <= start or (stop is not None and lo >= stop) or size == 0:
            continue
        try:
            rows = _parquet_rows(pf.read_row_group(group))
        except Exception as exc:  # noqa: BLE001
            # One corrupt row group: one reject at its first row; the other groups are still read.
            if lo >= start and (stop is None or lo < stop):
                yield _Item(lo, 0, _Bad(RejectCode.UNREADABLE_FILE, f"row group {group} (rows {lo}-{hi - 1}) unreadable: {exc}"))
            continue
        for i, row in enumerate(rows):
            pos = lo + i
            if pos >= start and (stop is None or pos < stop):
                if not isinstance(row, _Bad):
                    try:
                        row = _plain(row)
                    except UnicodeDecodeError as exc:
                        row = _Bad(RejectCode.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start} of a binary value")
                yield _Item(pos, 0, row)


def _iter_file(path: Path, fmt: str, start: int = 1, stop: int | None = None, offset: int = 0) -> Iterator[_Item]:
    if fmt == PARQUET:
        return _iter_parquet(path, start, stop)
    return _iter_jsonl(path, fmt == JSONL_GZ, start, stop, offset)


# -- validation -------------------------------------------------------------------


def _check_record(data: Any) -> tuple[Conversation, str] | _Bad:
    """Validate one record. The explicit checks give each common fault its own
    code; `input_from_dict` stays the final authority on what a Conversation is."""
    if isinstance(data, _Bad):
        return data
    if not isinstance(data, dict):
        return _Bad(RejectCode.NOT_AN_OBJECT, f"a record must be a JSON object, got {type(data).__name__}")
    raw_id = data.get("conversation_id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id.strip():
        return _Bad(RejectCode.MISSING_ID, f"missing or empty conversation_id (got {raw_id!r})")
    conv_id = raw_id

    def bad(code: RejectCode, reason: str) -> _Bad:
        return _Bad(code, reason, conv_id)

    channel = data.get("channel")
    if not isinstance(channel, str) or channel not in {c.value for c in CONVERSATION_CHANNELS}:
        return bad(RejectCode.UNKNOWN_CHANNEL, f"channel must be call or im, got {channel!r}")
    started_at = data.get("started_at")
    if not isinstance(started_at, str):
        return bad(RejectCode.BAD_STARTED_AT, f"missing started_at (got {started_at!r})")
    try:
        datetime.fromisoformat(started_at)
    except ValueError:
        return bad(RejectCode.BAD_STARTED_AT, f"started_at is not ISO-8601: {started_at!r}")
    turns = data.get("turns")
    if not isinstance(turns, list) or not turns:
        return bad(RejectCode.NO_TURNS, f"turns must be a non-empty list (got {_short(turns)})")
    speakers = {s.value for s in Speaker}
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return bad(RejectCode.BAD_TURN, f"turns[{i}] must be an object, got {_short(turn)}")
        if not isinstance(turn.get("speaker"), str) or turn["speaker"] not in speakers:
            return bad(RejectCode.BAD_SPEAKER, f"turns[{i}].speaker must be agent, customer or system, got {_short(turn.get('speaker'))}")
        text = turn.get("text")
        if not isinstance(text, str) or not text.strip():
            return bad(RejectCode.EMPTY_TEXT, f"turns[{i}].text is missing or empty (got {_short(text)})")
    metadata = data.get("metadata")
    if isinstance(metadata, str):  # Parquet writers often store free-form metadata as JSON text
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            return bad(RejectCode.BAD_METADATA, "metadata is a string but not JSON")
    elif isinstance(metadata, list) and all(isinstance(kv, (list, tuple)) and len(kv) == 2 for kv in metadata):
        metadata = dict(metadata)  # an Arrow map column arrives as a list of (key, value)
    if metadata is not None and not isinstance(metadata, dict):
        return bad(RejectCode.BAD_METADATA, f"metadata must be an object, got {type(metadata).__name__}")
    try:
        conv = input_from_dict(
            {"conversation_id": conv_id, "channel": channel, "turns": turns, "metadata": metadata or {}}, "record"
        )
    except ValidationError as exc:
        return bad(RejectCode.INVALID_RECORD, str(exc))
    assert isinstance(conv, Conversation)
    return conv, started_at


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _location(source: str, fmt: str, pos: int) -> str:
    return f"{source} {'row' if fmt == PARQUET else 'line'} {pos}"


def _result(source: str, item: _Item) -> RecordResult:
    checked = _check_record(item.payload)
    line = None if item.pos == FILE_LEVEL else item.pos
    if isinstance(checked, _Bad):
        return Reject(source, line, checked.conversation_id, checked.reason, checked.code)
    conv, started_at = checked
    return LogRecord(source=source, line=item.pos, conversation=conv, started_at=started_at)


def _duplicate(record: LogRecord, first: str) -> Reject:
    return Reject(
        record.source,
        record.line,
        record.conversation_id,
        f"duplicate conversation_id {record.conversation_id!r}: first seen at {first}",
        RejectCode.DUPLICATE_ID,
    )


def _scan(day: DayFiles) -> Iterator[tuple[str, str, _Item, RecordResult]]:
    """The one pass both `iter_records` and the planner use: every item of the
    day in read order, validated, with day-wide duplicate detection."""
    first_seen: dict[str, str] = {}
    for name in day.files:
        fmt = log_format(name)
        assert fmt is not None
        for item in _iter_file(day.folder / name, fmt):
            result = _result(name, item)
            if isinstance(result, LogRecord):
                cid = result.conversation_id
                if cid in first_seen:
                    result = _duplicate(result, first_seen[cid])
                else:
                    first_seen[cid] = _location(name, fmt, item.pos)
            yield name, fmt, item, result


def iter_records(folder: str | Path) -> Iterator[RecordResult]:
    """Every record of the day, in read order, as a LogRecord or a Reject."""
    for _name, _fmt, _item, result in _scan(list_day(folder)):
        yield result


# -- chunks --------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Items at positions [start, stop) of one file. start == 0 (FILE_LEVEL)
    is the one item of a file that could not be opened at planning time."""

    file: str
    format: str
    start: int
    stop: int
    offset: int  # byte offset of line `start` in the decompressed stream (JSONL); 0 for Parquet
    count: int  # items in the span: a re-read must find exactly this many
    size: int  # the file's size and mtime at planning time
    mtime_ns: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Chunk:
    index: int
    folder: str
    spans: tuple[Span, ...]
    # (file, position, where the first occurrence is) of the records in this
    # chunk that the planning pass found to repeat an earlier conversation id.
    duplicates: tuple[tuple[str, int, str], ...] = ()

    @property
    def count(self) -> int:
        return sum(s.count for s in self.spans)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (to pass a chunk to a Celery task)."""
        return {
            "index": self.index,
            "folder": self.folder,
            "spans": [s.to_dict() for s in self.spans],
            "duplicates": [list(d) for d in self.duplicates],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Chunk:
        return cls(
            index=int(data["index"]),
            folder=str(data["folder"]),
            spans=tuple(Span(**s) for s in data["spans"]),
            duplicates=tuple((str(f), int(p), str(w)) for f, p, w in data.get("duplicates", ())),
        )


@dataclass(frozen=True)
class DayPlan:
    folder: Path
    chunks: list[Chunk]
    ignored: tuple[str, ...]
    records: int  # items planned (valid records + rejects)
    rejects: int  # of which rejects (duplicates included)
    duplicates: int
    # The rejects themselves, in read order, for the job's rejects file (the
    # planning pass has them in hand; re-reading the day would cost a pass).
    reject_records: tuple[Reject, ...] = ()


def plan_day(folder: str | Path, chunk_size: int) -> DayPlan:
    """One pass over the day: cut it into chunks of `chunk_size` items (the
    last may be shorter) and mark the duplicates. See the module docstring."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValidationError("chunk_size", "must be a positive integer", chunk_size)
    day = list_day(folder)
    stats = {name: os.stat(day.folder / name) for name in day.files}
    chunks: list[Chunk] = []
    # The chunk being filled: items as (file, fmt, pos, offset), and its duplicates.
    items: list[tuple[str, str, int, int]] = []
    dups: list[tuple[str, int, str]] = []
    rejects: list[Reject] = []
    n_rejects = n_dups = n_items = 0

    def close() -> None:
        spans: list[Span] = []
        for name, fmt, pos, offset in items:
            if spans and spans[-1].file == name:
                spans[-1] = _extend(spans[-1], pos)
            else:
                st = stats[name]
                spans.append(Span(name, fmt, pos, pos + 1, offset, 1, st.st_size, st.st_mtime_ns))
        chunks.append(Chunk(len(chunks), str(day.folder), tuple(spans), tuple(dups)))
        items.clear()
        dups.clear()

    for name, fmt, item, result in _scan(day):
        n_items += 1
        items.append((name, fmt, item.pos, item.offset))
        if isinstance(result, Reject):
            n_rejects += 1
            rejects.append(result)
            if result.code is RejectCode.DUPLICATE_ID:
                n_dups += 1
                dups.append((name, item.pos, result.reason.rsplit("first seen at ", 1)[1]))
        if len(items) == chunk_size:
            close()
    if items:
        close()
    return DayPlan(day.folder, chunks, day.ignored, n_items, n_rejects, n_dups, tuple(rejects))


def _extend(span: Span, pos: int) -> Span:
    return Span(span.file, span.format, span.start, pos + 1, span.offset, span.count + 1, span.size, span.mtime_ns)


def plan_chunks(folder: str | Path, chunk_size: int) -> list[Chunk]:
    return plan_day(folder, chunk_size).chunks


def read_chunk(chunk: Chunk) -> Iterator[RecordResult]:
    """Re-read exactly the records of `chunk`, with the day-wide duplicate
    decisions the planner stored in it. Raises PreconditionError if a file
    changed since planning (the plan no longer describes it)."""
    folder = Path(chunk.folder)
    for span in chunk.spans:
        path = folder / span.file
        try:
            st = os.stat(path)
        except OSError as exc:
            raise PreconditionError(f"{path}: gone since the day was planned ({exc.strerror}); re-plan the day") from None
        if (st.st_size, st.st_mtime_ns) != (span.size, span.mtime_ns):
            raise PreconditionError(f"{path}: changed since the day was planned; re-plan the day")
        dups = {pos: first for name, pos, first in chunk.duplicates if name == span.file}
        seen = 0
        for item in _iter_file(path, span.format, max(span.start, 1), span.stop, span.offset):
            if not span.start <= item.pos < span.stop:
                continue  # e.g. the file opened now though it failed at planning: caught by the count check
            result = _result(span.file, item)
            if isinstance(result, LogRecord) and item.pos in dups:
                result = _duplicate(result, dups[item.pos])
            seen += 1
            yield result
        if seen != span.count:
            raise PreconditionError(
                f"{path}: lines/rows {span.start}-{span.stop - 1} held {span.count} records at planning, "
                f"{seen} now; re-plan the day"
            )


# -- rejects file -------------------------------------------------------------------


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> int:
    """Write rejects as JSONL (one object per line with the reason); returns
    how many. Written to a temporary file and renamed, so a reader never sees
    half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            for reject in rejects:
                f.write(json.dumps(reject.to_dict(), ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def read_rejects(path: str | Path) -> list[Reject]:
    """The inverse of write_rejects (for reports and tests)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        out.append(Reject(d["source_file"], d["line"], d["conversation_id"], d["reason"], RejectCode(d["code"])))
    return out
