"""chatterbot-corpus (BSD-3-Clause): small English dialogues filed by topic.

Source: `chatterbot_corpus/data/english/<topic>.yml`, each a YAML mapping with
`categories` and `conversations` (lists of alternating utterances, the user's
first). 2,026 dialogues in 21 files; most are a question and its answer.

Task chat-topic (multiclass, conversation on channel im): the topic file a
dialogue was filed under, for the six topics with at least 40 distinct
dialogues (ai, coding, emotion, literature, psychology, trivia); the other 15
files are skipped as rare_topic (tech_support has 1,050 dialogues but about ten
distinct ones; the rest 1 to 31 each). The first speaker is
the customer, the second the agent; a dialogue that is not a list of
utterances (one is a bare string) or has an empty utterance is dropped. Splits by a hash of the normalised
dialogue (70/15/15); a dialogue filed under two topics is dropped (the dedupe's
conflicting labels).
"""

from __future__ import annotations

from typing import Any

import yaml

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

DISTRIBUTION, MODULE = "chatterbot-corpus", "chatterbot_corpus"
FOLDER = "data/english"
TOPICS = {  # file stem -> label
    "ai": "ai",
    "coding": "coding",
    "emotion": "emotion",
    "literature": "literature",
    "psychology": "psychology",
    "trivia": "trivia",
}
SPEAKERS = ("customer", "agent")
FRACTIONS = (0.7, 0.15, 0.15)
MAX_TURN_CHARS = 1000


def _files() -> list:
    folder = package_dir(MODULE, DISTRIBUTION) / FOLDER
    files = sorted(folder.glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"{DISTRIBUTION}: no topic files in {folder}")
    return files


def source_info() -> dict[str, Any]:
    root = package_dir(MODULE, DISTRIBUTION)
    return {
        "package": DISTRIBUTION,
        "version": package_version(DISTRIBUTION),
        "licence": "BSD-3-Clause",
        "files": [f"{MODULE}/{FOLDER}/*.yml"],
        "sha256": digest_files(root, _files()),
    }


def build(seed: int) -> list[TaskData]:
    drops = Drops()
    candidates = []
    clipped = 0
    for path in _files():
        dialogues = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []
        label = TOPICS.get(path.stem)
        if label is None:
            drops.add("rare_topic", len(dialogues))
            continue
        for dialogue in dialogues:
            # a dialogue is a list of utterances; one file has a bare string (a YAML indentation slip)
            if not isinstance(dialogue, list) or not all(isinstance(u, (str, int, float)) for u in dialogue):
                drops.add("malformed_dialogue")
                continue
            texts = [clean_text(str(u)) for u in dialogue]
            if not all(texts):  # an empty utterance would break the speakers' alternation
                drops.add("empty_utterance")
                continue
            if len(texts) < 2:
                drops.add("fewer_than_two_turns")
                continue
            turns = []
            for i, text in enumerate(texts):
                text, was_clipped = clip(text, MAX_TURN_CHARS)
                clipped += was_clipped
                turns.append({"speaker": SPEAKERS[i % 2], "text": text})
            key = norm_key("\n".join(f"{t['speaker']}: {t['text']}" for t in turns))
            candidates.append(Candidate(key=key, record={"channel": "im", "turns": turns, "label": label}, answer=label))
    splits = finalize("chat-topic", candidates, drops, seed=seed, fractions=FRACTIONS)
    return [TaskData("chat-topic", splits, drops, modified={"turns_clipped": clipped},
                     notes=[("the 6 topics with 40+ distinct dialogues; first speaker customer, second agent; "
                            "splits by hash of the dialogue, 70/15/15")])]
