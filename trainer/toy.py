"""A toy job: a hand-made catalogue of small text tasks and seeded synthetic
data in the trainer's format, for tests, demos and docs/training.md.

    python -m trainer.toy OUT_DIR [--train N] [--dev N]

writes OUT_DIR/catalogue.yaml, OUT_DIR/data/<task>/{train,dev,test}.jsonl and
OUT_DIR/job.yaml (a two-task two_stage job on the tiny or default model).
The labels follow keywords in the text, so even a small model can learn them.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import yaml

TOY_CATALOGUE: dict[str, Any] = {
    "catalogue": "toy",
    "description": "Synthetic keyword tasks for trainer tests.",
    "tasks": [
        {
            "name": "sentiment", "instruction": "Is this review positive or negative? Answer {labels}.",
            "input_kind": "text", "taxonomy": "binary", "channels": ["review"],
            "labels": [{"name": "positive", "verbalizer": "positive"}, {"name": "negative", "verbalizer": "negative"}],
        },
        {
            "name": "topic", "instruction": "What is the review about? Answer one of: {labels}.",
            "input_kind": "text", "taxonomy": "multiclass", "channels": ["review"],
            "labels": [{"name": "room", "verbalizer": "room"}, {"name": "food", "verbalizer": "food"}, {"name": "staff", "verbalizer": "staff"}],
        },
        {
            "name": "aspects", "instruction": "Which aspects does the review mention?",
            "input_kind": "text", "taxonomy": "multilabel", "channels": ["review"],
            "labels": [{"name": "price", "verbalizer": "price"}, {"name": "noise", "verbalizer": "noise"}, {"name": "view", "verbalizer": "view"}],
        },
        {
            "name": "headline", "instruction": "Write a three-word headline for the review.",
            "input_kind": "text", "taxonomy": "generation", "channels": ["review"], "max_new_tokens": 8,
        },
    ],
}

_POS = ["great", "lovely", "excellent", "wonderful"]
_NEG = ["awful", "terrible", "dreadful", "horrible"]
_TOPIC = {"room": ["bed", "bathroom", "pillow"], "food": ["breakfast", "dinner", "coffee"], "staff": ["receptionist", "porter", "manager"]}
_ASPECT = {"price": "expensive", "noise": "noisy", "view": "sea view"}


def _example(rng: random.Random, task: str, i: int) -> dict[str, Any]:
    positive = rng.random() < 0.5
    topic = rng.choice(sorted(_TOPIC))
    aspects = [a for a in sorted(_ASPECT) if rng.random() < 0.35]
    word = rng.choice(_POS if positive else _NEG)
    thing = rng.choice(_TOPIC[topic])
    extra = " ".join(_ASPECT[a] for a in aspects)
    text = f"The {thing} was {word}. {extra} Stay {i}.".replace("  ", " ")
    line: dict[str, Any] = {"id": f"{task}-{i}", "text": text}
    if task == "sentiment":
        line["label"] = "positive" if positive else "negative"
    elif task == "topic":
        line["label"] = topic
    elif task == "aspects":
        line["label"] = aspects
    else:
        line["target"] = f"{word} {thing} stay"
    return line


def write_toy_data(out: Path, *, tasks: tuple[str, ...] = ("sentiment", "topic"), train: int = 24, dev: int = 8, test: int = 8, seed: int = 0) -> Path:
    """Write the toy catalogue and data under `out`; returns the data folder."""
    out = Path(out)
    data = out / "data"
    for task in tasks:
        folder = data / task
        folder.mkdir(parents=True, exist_ok=True)
        for split, n, offset in (("train", train, 0), ("dev", dev, 100_000), ("test", test, 200_000)):
            rng = random.Random(f"{seed}/{task}/{split}")
            lines = [json.dumps(_example(rng, task, offset + i)) for i in range(n)]
            (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "catalogue.yaml").write_text(yaml.safe_dump(TOY_CATALOGUE, sort_keys=False), encoding="utf-8")
    return data


def toy_job(out: Path, **overrides: Any) -> dict[str, Any]:
    """A small two-task job mapping over the toy data (merge `overrides` on top)."""
    job: dict[str, Any] = {
        "name": "toy",
        "catalogue": "catalogue.yaml",
        "data_dir": "data",
        "tasks": ["sentiment", "topic"],
        "method": "two_stage",
        "max_steps": 12,
        "max_seq_len": 128,
        "training": {"lr": 1e-3, "micro_batch": 2, "grad_accum": 2, "warmup_ratio": 0.1, "state_every_steps": 4},
        "mixture": {"stage1_steps": 4, "stage2_steps": 8},
        "baselines": {"steps": 6},
        "resources": {"high": ["sentiment"]},
        "eval": {"every_steps": 3, "dev_cap": 8, "batch_size": 16},
        "output": {"runs_dir": "runs", "checkpoints_dir": "checkpoints"},
        "device": "cpu",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key] = {**job[key], **value}
        elif value is None and key in job:
            job.pop(key)
        else:
            job[key] = value
    return job


# -- a job with a known promotion outcome --------------------------------------------------------
def _binary(name: str, instruction: str) -> dict[str, Any]:
    return {
        "name": name, "instruction": instruction + " Answer {labels}.", "input_kind": "text", "taxonomy": "binary", "channels": ["review"],
        "labels": [{"name": "positive", "verbalizer": "positive"}, {"name": "negative", "verbalizer": "negative"}],
    }


PROMOTION_CATALOGUE: dict[str, Any] = {
    "catalogue": "promo",
    "description": "Three binary tasks sharing their verbalizers; two agree, the third contradicts them.",
    "tasks": [
        _binary("polarity", "Is the review positive or negative?"),
        _binary("mood", "Was the guest happy?"),
        _binary("stubborn", "Is this stay negative?"),
    ],
}
PROMOTION_LABELS = {"polarity": "positive", "mood": "positive", "stubborn": "negative"}


def write_promotion_job(out: Path, base_model: str | Path, **overrides: Any) -> Path:
    """A three-task two_stage job whose promotion outcome does not depend on
    luck, for tests of `--promote` (returns the job file).

    Every example of `polarity` and `mood` is labelled positive, every one of
    `stubborn` negative, with the same verbalizers. Each single-task baseline
    learns its constant answer (dev 1.0). The multi-task model trains
    `polarity` and `mood` (the high-resource tasks) through all of stage 1,
    and stage 2 has a single step: it answers "positive" everywhere, so
    `polarity` and `mood` reach their baselines (ratio 1.0, qualified) and
    `stubborn` scores 0 against 1.0 (not qualified, interval [0, 0])."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "catalogue.yaml").write_text(yaml.safe_dump(PROMOTION_CATALOGUE, sort_keys=False), encoding="utf-8")
    things = ["bed", "breakfast", "porter", "view", "pool", "coffee"]
    for task, label in PROMOTION_LABELS.items():
        folder = out / "data" / task
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", 24), ("dev", 8)):
            rng = random.Random(f"{task}/{split}")
            lines = [json.dumps({"id": f"{task}-{split}-{i}", "text": f"The {rng.choice(things)} was fine. Stay {i}.", "label": label}) for i in range(n)]
            (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    job: dict[str, Any] = {
        "name": "promo", "catalogue": "catalogue.yaml", "data_dir": "data", "base_model": str(base_model), "method": "two_stage",
        "max_steps": 100, "max_seq_len": 128, "device": "cpu",
        "training": {"lr": 3e-3, "micro_batch": 4, "grad_accum": 1, "warmup_ratio": 0.1, "state_every_steps": 4},
        "mixture": {"stage1_steps": 12, "stage2_steps": 1},
        "baselines": {"steps": 8},
        "resources": {"high": ["polarity", "mood"]},
        "eval": {"every_steps": 4, "dev_cap": 8, "batch_size": 16},
        "output": {"runs_dir": "runs", "checkpoints_dir": "checkpoints"},
    }
    job.update(overrides)
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:  # pragma: no cover - a convenience
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--dev", type=int, default=40)
    args = parser.parse_args()
    write_toy_data(args.out, tasks=("sentiment", "topic", "aspects", "headline"), train=args.train, dev=args.dev, test=args.dev)
    # Settings for the default model on a CPU (about ten minutes on 2 cores):
    # micro-batch 8 (faster than 1 x 8 on a CPU, same gradient), short runs.
    job = toy_job(
        args.out, base_model=None, max_steps=200, max_seq_len=256,
        training={"lr": 1e-4, "micro_batch": 8, "grad_accum": 1, "warmup_ratio": 0.1, "state_every_steps": 10},
        mixture={"stage1_steps": 10, "stage2_steps": 40}, baselines={"steps": 30},
        eval={"every_steps": 10, "dev_cap": args.dev, "batch_size": 32}, output={"checkpoints_dir": None},
    )
    (args.out / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    print(args.out / "job.yaml")


if __name__ == "__main__":  # pragma: no cover
    main()
