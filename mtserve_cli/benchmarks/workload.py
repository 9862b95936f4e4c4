"""What the measures run on: the model (the prepared default, a named one, or
for `--smoke` a tiny random one built here), the hotel catalogue, and
SYNTHETIC inputs from batch.synth (a fixed seed, so every run scores the
same texts)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mtserve.config import Settings
from mtserve.engine import Engine, Request
from mtserve.inputs import Input, input_from_dict
from mtserve.prompt import PromptStyle
from mtserve.tasks import Catalogue, Task, builtin_catalogue_path, load_catalogue

SEED = 7
DATE = "2026-01-01"
SMOKE_ID = "tiny-bench"


@dataclass(frozen=True)
class BenchConfig:
    """What every measure is given (the CLI's flags)."""

    settings: Settings
    work_dir: Path  # temporary homes, the smoke model
    smoke: bool = False
    model: str | None = None  # a folder or checkpoint id; None: the default model (smoke: the tiny one)
    repeats: int = 5
    n: int = 8  # inputs per repeat (conversations, or calls)
    threads: int | None = None  # torch intra-op threads, when set by the caller (subprocess arms get it too)


def catalogue() -> Catalogue:
    return load_catalogue(builtin_catalogue_path("hotel"))


def checkpoint_path(cfg: BenchConfig) -> Path:
    """The checkpoint folder the measures load (built once per work folder for --smoke)."""
    from mtserve.models import resolve_model_path

    if cfg.model is not None or not cfg.smoke:
        return resolve_model_path(cfg.model, cfg.settings.checkpoints_root)
    return _tiny_checkpoint(cfg.work_dir)


@cache
def _tiny_checkpoint(work_dir: Path) -> Path:
    from mtserve.models import build_tiny_checkpoint, smollm2_tokenizer

    folder = work_dir / "checkpoints" / SMOKE_ID
    if (folder / "manifest.json").exists():
        return folder
    tokenizer = smollm2_tokenizer(work_dir / "tokenizers" / "smollm2")
    return build_tiny_checkpoint(folder, tokenizer, checkpoint_id=SMOKE_ID, arch="llama")


def load(cfg: BenchConfig, dtype: str = "float32") -> Any:
    """The model, on the configured device. float32 unless asked: the figures
    compare with the issue's (CPU float32), whatever `auto` resolves to."""
    from mtserve.models import load_model_folder

    return load_model_folder(checkpoint_path(cfg), device=cfg.settings.device, dtype=dtype, root=cfg.settings.checkpoints_root)


def engine(loaded: Any, cfg: BenchConfig, cat: Catalogue | None = None, style: PromptStyle | None = None) -> Engine:
    """An engine over the loaded model, asking in its checkpoint's prompt style unless `style` is given."""
    cat = cat or catalogue()
    return Engine(
        loaded.model, loaded.tokenizer, cat.truncation, max_batch_tokens=cfg.settings.inference.max_batch_tokens,
        style=style or loaded.manifest.prompt_style, name=loaded.id,
    )


def conversations(n: int, seed: int = SEED) -> list[Input]:
    """`n` synthetic call and IM conversations."""
    from batch.synth import generate_day

    day = generate_day(DATE, n, seed=seed, n_emails=0, n_reviews=0)
    return [input_from_dict(c.record) for c in day.conversations]


def mixed_inputs(n: int, seed: int = SEED) -> list[Input]:
    """`n` conversations plus n//4 e-mails and n//4 reviews: between them
    every task of the hotel catalogue applies to something."""
    from batch.synth import generate_day

    day = generate_day(DATE, n, seed=seed)
    items = [c.record for c in day.conversations] + [e.record for e in day.emails] + [r.record for r in day.reviews]
    return [input_from_dict(r) for r in items]


def applicable(cat: Catalogue, inp: Input, *, generation: bool = False) -> list[Task]:
    """The catalogue's tasks that read this input (classification only, unless `generation`)."""
    channel = getattr(inp, "channel", None)
    return [t for t in cat.tasks if (generation or not t.is_generation) and t.applies_to(inp.kind, channel)]


def all_tasks_requests(cat: Catalogue, inputs: list[Input]) -> list[list[Request]]:
    """Per input: a request for every applicable classification task."""
    return [[Request(t, inp) for t in applicable(cat, inp)] for inp in inputs]


def one_task(cat: Catalogue, inp: Input) -> Task:
    """The one task of the single-task arms: the first applicable
    single-label task in catalogue order (rc-a for a call, rc-i for an IM
    chat, ec for an e-mail: one forward pass at best), else the first
    applicable task (a review has only rtc, multi-label)."""
    tasks = applicable(cat, inp)
    return next((t for t in tasks if t.taxonomy.value != "multilabel"), tasks[0])
