"""The training runs of tests/trainer/test_ddp.py on two ranks: forked by
torch.multiprocessing (the fast test), or as a script that torchrun starts
once per rank (the slow test, the real launcher):

    torchrun --standalone --nproc_per_node 2 tests/trainer/ddp_worker.py CHECKPOINT OUT

The test also imports it for its one-process reference (the same code).

Two runs of the toy tasks on the tiny random model, each rank writing its
final trainable weights and the events it saw to OUT (test artefacts; the
runs' own folders are written by rank 0 alone):

    full     float32 full fine-tuning, no dropout: compared with one process
    lora     LoRA with dropout, uninterrupted and crashed + resumed: compared
             with each other (ranks > 0 reseed per step, so a resume is exact)
"""

from __future__ import annotations

import copy
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mtserve.inputs import Text
from mtserve.models import LoadedModel, load_checkpoint
from mtserve.prompt import PromptRenderer
from mtserve.tasks import Channel, parse_catalogue
from trainer.data import Example
from trainer.toy import TOY_CATALOGUE
from trainer.train import Dist, LoopSettings, StagePlan, Trainer, encode_task, init_distributed

TOY = parse_catalogue(TOY_CATALOGUE)
# Global batch 1 x 4 = 4 examples a step: two micro-batches per rank on two
# ranks, so each rank also accumulates (DDP's no_sync) before the all-reduce,
# and the gradient sums run in another order than in one process.
SETTINGS = LoopSettings(seed=0, micro_batch=1, grad_accum=4, length_group_steps=3, warmup_ratio=0.2, state_every=2, precision="fp32")
STAGES = [StagePlan("stage1", {"sentiment": 1.0}, 2, 1e-3), StagePlan("stage2", {"sentiment": 0.5, "topic": 0.5}, 4, 1e-3)]
CRASH_AT = 3  # a stage2 step after the state of step 2 and before the next one


class Crash(Exception):
    pass


def toy_examples(task: str, n: int) -> list[Example]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        good = rng.random() < 0.5
        text = f"The room was {'lovely' if good else 'awful'} and the view {i} was {'great' if good else 'bad'}."
        gold = ("positive" if good else "negative") if task == "sentiment" else ["room", "food", "staff"][i % 3]
        out.append(Example(str(i), Text(text, Channel.REVIEW), gold))
    return out


def trainable(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.named_parameters() if v.requires_grad}


def train(lm: LoadedModel, run_dir: Path, dist: Dist, *, lora: bool = False, crash: bool = False,
          events: list[dict[str, Any]] | None = None) -> dict[str, torch.Tensor]:
    """One run of STAGES on a copy of lm's model; resumes from run_dir's state when there is one."""
    model = copy.deepcopy(lm.model)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "v_proj"]))
    renderer = PromptRenderer(lm.tokenizer, TOY.truncation)
    data = {t: encode_task(renderer, TOY.task(t), toy_examples(t, 16), max_seq_len=256) for t in ("sentiment", "topic")}

    def emit(event: dict[str, Any]) -> None:
        if events is not None:
            events.append(event)
        # Raised on every rank at the same step, after its optimizer step and
        # outside any collective, as a job killed between two steps.
        if crash and event["event"] == "step" and event["stage"] == "stage2" and event["step"] == CRASH_AT:
            raise Crash()

    Trainer(model, lm.tokenizer, SETTINGS, run_dir, emit=emit, dist=dist).run(STAGES, data)
    return trainable(model)


def run_all(lm: LoadedModel, out: Path) -> None:
    """The runs of one rank (the process group is up)."""
    torch.set_num_threads(1)  # two ranks on two shared cores
    dist = init_distributed("cpu")
    assert dist.world == 2, dist
    events: list[dict[str, Any]] = []
    full = train(lm, out / "runs" / "full", dist, events=events)
    lora = train(lm, out / "runs" / "lora", dist, lora=True)
    try:
        train(lm, out / "runs" / "lora-crashed", dist, lora=True, crash=True)
        raise AssertionError("the crash did not happen")
    except Crash:
        pass
    resumed = train(lm, out / "runs" / "lora-crashed", dist, lora=True)
    r = dist.rank
    save_file(full, str(out / f"full-rank{r}.safetensors"))
    save_file(lora, str(out / f"lora-rank{r}.safetensors"))
    save_file(resumed, str(out / f"lora-resumed-rank{r}.safetensors"))
    (out / f"events-rank{r}.json").write_text(json.dumps(events, default=str))
    torch.distributed.destroy_process_group()


def forked(rank: int, lm: LoadedModel, out: Path, port: int) -> None:
    """A rank forked by torch.multiprocessing: the environment torchrun would
    set, then the same runs. Forked, the rank inherits the loaded model and
    the imports (seconds instead of a fresh interpreter's half minute here)."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    run_all(lm, out)


if __name__ == "__main__":
    run_all(load_checkpoint(Path(sys.argv[1]), device="cpu", dtype="float32"), Path(sys.argv[2]))
