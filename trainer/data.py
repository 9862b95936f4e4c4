"""A task's labelled data: JSONL files per split, validated line by line.

Format (one example per line, UTF-8):

    {"id": "x1", "text": "...", "label": "positive"}                 text input
    {"text": "...", "text_b": "...", "label": "match"}                text pair
    {"channel": "call", "turns": [{"speaker": "customer", "text": "..."}],
     "conversation_id": "c9", "label": "yes"}                         conversation
    {"text": "...", "label": ["service", "price"]}                    multi-label
    {"text": "...", "target": "a title"}                              generation

`id` is optional; without it the id is a stable hash of the example's content.
Text inputs may carry a `channel` (email/review); when they do, it must be one
the task serves.

Nothing is dropped silently. Every line that does not fit the task (invalid
UTF-8, invalid JSON, a missing field, an empty text, the wrong input kind, a
channel the task does not serve, an unknown label, a duplicate id) becomes a
`BadLine` naming the file and the 1-based line number; the other lines still
load. Whether a job may train with bad lines is the job's decision:
`check_no_bad_lines` is the refusal it calls by default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtserve.errors import MtserveError, ValidationError
from mtserve.inputs import Input, input_from_dict
from mtserve.tasks import InputKind, Task, Taxonomy

SPLITS: tuple[str, ...] = ("train", "dev", "test")
REQUIRED_SPLITS: frozenset[str] = frozenset({"train"})

# The fields a line may hold: input fields per kind, plus the answer and the id.
_INPUT_FIELDS: dict[InputKind, tuple[str, ...]] = {
    InputKind.TEXT: ("text",),
    InputKind.TEXT_PAIR: ("text", "text_b"),
    InputKind.CONVERSATION: ("channel", "turns"),
}
_OPTIONAL_FIELDS: dict[InputKind, frozenset[str]] = {
    InputKind.TEXT: frozenset({"channel"}),
    InputKind.TEXT_PAIR: frozenset({"channel"}),
    InputKind.CONVERSATION: frozenset({"conversation_id", "metadata"}),
}
_ANSWER_FIELDS = frozenset({"id", "label", "target"})
# What a line of each kind looks like, to say "this line is a conversation"
# rather than "missing field text".
_KIND_MARKERS: tuple[tuple[str, InputKind], ...] = (
    ("turns", InputKind.CONVERSATION),
    ("text_b", InputKind.TEXT_PAIR),
    ("text", InputKind.TEXT),
)
ID_HASH_CHARS = 16


@dataclass(frozen=True)
class Example:
    id: str
    input: Input
    label: str | tuple[str, ...] | None  # label name; a tuple (task label order) for multi-label; None for generation
    target: str | None = None  # generation

    @property
    def gold(self) -> str | tuple[str, ...]:
        """What the model should answer: the label name(s), or the target text."""
        if self.label is not None:
            return self.label
        assert self.target is not None, "an Example has a label or a target"
        return self.target


@dataclass
class BadLine:
    file: str
    line: int  # 1-based
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class SplitData:
    task: str
    split: str
    path: Path
    examples: list[Example]
    bad_lines: list[BadLine]
    sha256: str  # of the file's bytes, for the checkpoint manifest

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def ok(self) -> bool:
        return not self.bad_lines

    def label_counts(self) -> dict[str, int]:
        """Examples per label name (multi-label: per label in the set); empty for generation."""
        counts: dict[str, int] = {}
        for ex in self.examples:
            names = () if ex.label is None else (ex.label,) if isinstance(ex.label, str) else ex.label
            for name in names:
                counts[name] = counts.get(name, 0) + 1
        return counts


class _BadExample(Exception):
    """One line's problem; becomes a BadLine, never escapes this module."""


# -- one line -----------------------------------------------------------------------


def example_id(record: Mapping[str, Any]) -> str:
    """A stable id for a line without one: a hash of its content in canonical
    JSON, so re-formatting the file (spacing, key order) keeps the id."""
    body = {k: v for k, v in record.items() if k != "id"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:ID_HASH_CHARS]


def _line_kind(record: Mapping[str, Any]) -> InputKind | None:
    for key, kind in _KIND_MARKERS:
        if key in record:
            return kind
    return None


def _check_fields(task: Task, record: Mapping[str, Any]) -> None:
    kind = _line_kind(record)
    # A lone `text` for a pair task reads better as "missing text_b".
    half_pair = kind is InputKind.TEXT and task.input_kind is InputKind.TEXT_PAIR
    if kind is not None and kind is not task.input_kind and not half_pair:
        raise _BadExample(f"wrong input kind: task {task.name!r} reads {task.input_kind.value} input, this line is {kind.value}")
    for name in _INPUT_FIELDS[task.input_kind]:
        if name not in record:
            raise _BadExample(f"missing field {name!r} ({task.input_kind.value} input needs {list(_INPUT_FIELDS[task.input_kind])})")
    answer = "target" if task.is_generation else "label"
    if answer not in record:
        raise _BadExample(f"missing field {answer!r}")
    wrong = "label" if task.is_generation else "target"
    if wrong in record:
        raise _BadExample(
            f"field {wrong!r} does not belong here: task {task.name!r} is {task.taxonomy.value} and takes {answer!r}"
        )
    allowed = set(_INPUT_FIELDS[task.input_kind]) | _OPTIONAL_FIELDS[task.input_kind] | {"id", answer}
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise _BadExample(f"unknown field(s) {unknown}; a {task.input_kind.value} line has {sorted(allowed)}")


def _parse_input(task: Task, record: Mapping[str, Any]) -> Input:
    fields = {k: v for k, v in record.items() if k not in _ANSWER_FIELDS}
    try:
        inp = input_from_dict(fields, where="input")
    except MtserveError as exc:  # empty text, unknown channel or speaker, ...
        raise _BadExample(str(exc)) from None
    except (TypeError, ValueError) as exc:  # e.g. a "metadata" that is not an object
        raise _BadExample(f"invalid input: {exc}") from None
    channel = getattr(inp, "channel", None)
    # The engine only checks conversation channels; for training data a text
    # tagged with a channel the task does not serve is a mislabelled file too.
    if channel is not None and channel not in task.channels:
        raise _BadExample(
            f"channel {channel.value!r} is not served by task {task.name!r} (it serves {[c.value for c in task.channels]})"
        )
    return inp


def _parse_label(task: Task, raw: Any) -> str | tuple[str, ...]:
    names = task.label_names
    if task.taxonomy is Taxonomy.MULTILABEL:
        if not isinstance(raw, list):
            raise _BadExample(f"label must be a list of label names for multi-label task {task.name!r} (got {raw!r})")
        for name in raw:
            if not isinstance(name, str) or name not in names:
                raise _BadExample(f"unknown label {name!r}; task {task.name!r} has labels {list(names)}")
        if len(set(raw)) != len(raw):
            raise _BadExample(f"label list repeats a label: {raw!r}")
        # An empty list is a valid answer ("none of these apply"). Task order
        # makes equal sets equal tuples.
        return tuple(n for n in names if n in raw)
    if not isinstance(raw, str):
        raise _BadExample(f"label must be one label name (a string) for {task.taxonomy.value} task {task.name!r} (got {raw!r})")
    if raw not in names:
        raise _BadExample(f"unknown label {raw!r}; task {task.name!r} has labels {list(names)}")
    return raw


def _parse_id(record: Mapping[str, Any]) -> str:
    raw = record.get("id")
    if raw is None:
        return example_id(record)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or (isinstance(raw, str) and not raw.strip()):
        raise _BadExample(f"id must be a non-empty string or an integer (got {raw!r})")
    return str(raw)


def parse_example(task: Task, record: Any) -> Example:
    """One decoded JSON value -> Example, or _BadExample with the reason."""
    if not isinstance(record, dict):
        raise _BadExample(f"a line must be a JSON object (got {type(record).__name__})")
    _check_fields(task, record)
    ex_id = _parse_id(record)
    inp = _parse_input(task, record)
    if task.is_generation:
        target = record["target"]
        if not isinstance(target, str) or not target.strip():
            raise _BadExample(f"target must be a non-empty string (got {target!r})")
        return Example(id=ex_id, input=inp, label=None, target=target)
    return Example(id=ex_id, input=inp, label=_parse_label(task, record["label"]))


def _decode(raw: bytes, lineno: int) -> Any:
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a BOM some editors write
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")  # strict: one bad line must not spoil the others
    except UnicodeDecodeError as exc:
        raise _BadExample(f"invalid UTF-8 at byte {exc.start} ({raw[exc.start:exc.start + 4]!r})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadExample(f"invalid JSON: {exc.msg} at column {exc.colno}") from None


# -- files --------------------------------------------------------------------------


def _lines(path: Path, digest: Any) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes without the newline), hashing as it reads."""
    with open(path, "rb") as fp:
        for lineno, raw in enumerate(fp, start=1):
            digest.update(raw)
            yield lineno, raw.rstrip(b"\r\n")


def load_split(task: Task, path: Path, split: str) -> SplitData:
    """Load and validate one JSONL file; bad lines are returned, not raised."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError("data", f"no {split} file for task {task.name!r}", str(path))
    digest = hashlib.sha256()
    examples: list[Example] = []
    bad: list[BadLine] = []
    first_line_of: dict[str, int] = {}
    for lineno, raw in _lines(path, digest):
        if not raw.strip():
            continue  # a blank line holds no example (a trailing newline is common)
        try:
            ex = parse_example(task, _decode(raw, lineno))
            if ex.id in first_line_of:
                # Paired comparisons and cached results key on the id.
                raise _BadExample(f"duplicate id {ex.id!r} (first on line {first_line_of[ex.id]})")
        except _BadExample as exc:
            bad.append(BadLine(str(path), lineno, str(exc)))
            continue
        first_line_of[ex.id] = lineno
        examples.append(ex)
    return SplitData(task=task.name, split=split, path=path, examples=examples, bad_lines=bad, sha256=digest.hexdigest())


def load_task_data(task: Task, folder: Path, splits: Sequence[str] = SPLITS) -> dict[str, SplitData]:
    """folder/<split>.jsonl for each split asked. A missing train file is an
    error; a missing dev or test file is simply absent from the result."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValidationError("data", f"no data folder for task {task.name!r}", str(folder))
    out: dict[str, SplitData] = {}
    for split in splits:
        path = folder / f"{split}.jsonl"
        if not path.exists():
            if split in REQUIRED_SPLITS:
                raise ValidationError("data", f"task {task.name!r} needs a {split} split; the file is missing", str(path))
            continue
        out[split] = load_split(task, path, split)
    return out


def check_no_bad_lines(splits: Iterable[SplitData], *, limit: int = 20, hint: str = "") -> None:
    """Refuse to go on when any file has bad lines: raise a ValidationError
    listing the first `limit` as "file:line: reason" and the total count."""
    bad = [b for s in splits for b in s.bad_lines]
    if not bad:
        return
    files = len({b.file for b in bad})
    shown = "\n".join(f"  {b}" for b in bad[:limit])
    more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
    tail = f"\n{hint}" if hint else ""
    raise ValidationError(
        "data",
        f"{len(bad)} bad line(s) in {files} file(s); no example is dropped silently, fix them"
        f" or opt in to skipping them:\n{shown}{more}{tail}",
        show_value=False,
    )



# -- dev sets that are samples --------------------------------------------------------

DEV_SELECTION = "stratified-hash-v1"  # part of every run key: bump when the rule changes


@dataclass(frozen=True)
class DevSelection:
    """How a dev set was chosen from its file, and what a reader should know
    about it (warnings: one class, or too few examples of a label)."""

    method: str
    cap: int | None
    available: int
    selected: int
    label_counts: dict[str, int]
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "cap": self.cap, "available": self.available, "selected": self.selected,
                "label_counts": dict(self.label_counts), "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DevSelection:
        return cls(str(data["method"]), data["cap"], int(data["available"]), int(data["selected"]),
                   dict(data["label_counts"]), tuple(data["warnings"]))


def _stratum(ex: Example) -> str:
    if ex.label is None:
        return ""  # generation: one stratum
    return ex.label if isinstance(ex.label, str) else "|".join(ex.label)


def _rank(task: str, ex: Example) -> str:
    return hashlib.sha256(f"dev/{task}/{ex.id}".encode()).hexdigest()


def _allocate(sizes: Mapping[str, int], cap: int) -> dict[str, int]:
    """Proportional allocation of `cap` over strata (largest remainder), every
    stratum at least one example while the cap allows it."""
    total = sum(sizes.values())
    quota = {k: cap * n / total for k, n in sizes.items()}
    take = {k: min(sizes[k], int(q)) for k, q in quota.items()}
    if cap >= len(sizes):
        take = {k: max(n, 1) for k, n in take.items()}
    order = sorted(sizes, key=lambda k: (-(quota[k] - int(quota[k])), k))
    while sum(take.values()) < cap:
        progressed = False
        for k in order:
            if sum(take.values()) >= cap:
                break
            if take[k] < sizes[k]:
                take[k] += 1
                progressed = True
        if not progressed:
            break
    while sum(take.values()) > cap:  # the at-least-one rule overshot: trim the largest
        k = max(take, key=lambda k: (take[k], k))
        take[k] -= 1
    return take


def sample_dev(task: Task, examples: Sequence[Example], cap: int | None, *, min_per_label: int = 10) -> tuple[list[Example], DevSelection]:
    """A deterministic dev sample that does not depend on the file's order.

    Every example gets a rank, sha256("dev/<task>/<example id>") (ids are the
    file's own or a hash of the line's content, trainer.data.example_id). With
    a cap, the examples are split into strata by label (multi-label: by label
    set; generation: one stratum), the cap is shared out in proportion to the
    strata's sizes (largest remainder, at least one per stratum), and each
    stratum contributes its lowest-ranked examples. The sample (or the whole
    set, without a cap) is returned in rank order, so the bootstrap's
    resampling sees the same sequence whatever order the file had.

    Warnings: the sample holds one class only, or a label with fewer than
    `min_per_label` examples (a metric on it is mostly noise)."""
    ranked = sorted(examples, key=lambda ex: _rank(task.name, ex))
    if cap is not None and len(ranked) > cap:
        strata: dict[str, list[Example]] = {}
        for ex in ranked:
            strata.setdefault(_stratum(ex), []).append(ex)
        take = _allocate({k: len(v) for k, v in strata.items()}, cap)
        chosen = {ex.id for k, v in strata.items() for ex in v[: take[k]]}
        ranked = [ex for ex in ranked if ex.id in chosen]
    counts: dict[str, int] = {}
    for ex in ranked:
        names = () if ex.label is None else (ex.label,) if isinstance(ex.label, str) else ex.label
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    warnings: list[str] = []
    if not task.is_generation:
        present = [n for n in task.label_names if counts.get(n)]
        if len(present) <= 1 and task.taxonomy is not Taxonomy.MULTILABEL:
            warnings.append(f"dev set of {task.name!r} holds one class only ({present or 'none'}): its metric cannot tell a model from a constant answer")
        few = [f"{n}={counts.get(n, 0)}" for n in task.label_names if counts.get(n, 0) < min_per_label]
        if few:
            warnings.append(f"dev set of {task.name!r} has fewer than {min_per_label} examples of some labels ({', '.join(few)})")
    selection = DevSelection(DEV_SELECTION, cap, len(examples), len(ranked), {n: counts.get(n, 0) for n in task.label_names}, tuple(warnings))
    return ranked, selection

__all__ = [
    "DEV_SELECTION",
    "SPLITS",
    "BadLine",
    "DevSelection",
    "Example",
    "SplitData",
    "check_no_bad_lines",
    "example_id",
    "load_split",
    "load_task_data",
    "parse_example",
    "sample_dev",
]
