"""bf16 autocast against float32 for one training step, on the same batches,
in one process: the step-time ratio the trainer's `precision: auto` rests on.

    python -m trainer.benchmarks.precision --data DIR/data --catalogue DIR/catalogue.yaml --task shop-polarity
    python -m trainer.benchmarks.precision --compare RUNS/st-<fp32 run> RUNS/st-<bf16 run> --plots docs/img

The arms alternate (fp32, bf16, bf16, fp32, ...) over the same micro-batches,
so drift in the machine's load falls on both; each timed step is forward +
backward + gradient clipping of one micro-batch (the optimizer update is the
same float32 AdamW in both arms and is left out: it would also move the
weights between arms). Reported: median seconds per step per arm, their ratio,
and the loss of the same batches in both precisions (they must agree closely
for bf16 to be a drop-in). Never run in CI: it loads the real model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def run(data_dir: Path, catalogue_path: Path, task_name: str, *, micro_batch: int = 8, batches: int = 6, repeats: int = 3,
        max_seq_len: int = 160, model: str | None = None) -> dict[str, Any]:
    from mtserve.config import load_settings
    from mtserve.models import load_checkpoint, prepare_default
    from mtserve.precision import probe_description
    from mtserve.prompt import PromptRenderer
    from mtserve.tasks import load_catalogue
    from trainer.data import load_task_data
    from trainer.train import AnswerLoss, collate, encode_task

    catalogue = load_catalogue(catalogue_path)
    task = catalogue.task(task_name)
    folder = Path(model) if model else prepare_default(load_settings().checkpoints_root)
    loaded = load_checkpoint(folder, device="cpu", dtype="float32")
    net, tokenizer = loaded.model, loaded.tokenizer
    net.train()
    examples = load_task_data(task, data_dir / task_name, ("train",))["train"].examples[: micro_batch * batches]
    train = encode_task(PromptRenderer(tokenizer, catalogue.truncation), task, examples, max_seq_len=max_seq_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    feats = [train.items[i][0] for i in range(len(train))]
    micro = [collate(feats[k : k + micro_batch], pad, micro_batch) for k in range(0, len(feats), micro_batch)]
    loss_fn = AnswerLoss(net)
    params = [p for p in net.parameters() if p.requires_grad]

    def step(batch: Any, bf16: bool) -> tuple[float, float]:
        tic = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss, _ = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        seconds = time.perf_counter() - tic
        net.zero_grad(set_to_none=True)
        return seconds, float(loss.detach())

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    step(micro[0], False)
    step(micro[0], True)  # warm both kernels' caches
    for r in range(repeats):
        for b, batch in enumerate(micro):
            order = ("fp32", "bf16") if (r + b) % 2 == 0 else ("bf16", "fp32")
            for arm in order:
                seconds, loss = step(batch, arm == "bf16")
                times[arm].append(seconds)
                if r == 0:
                    losses[arm].append(loss)
    med = {arm: statistics.median(v) for arm, v in times.items()}
    tokens = sum(m.tokens for m in micro) / len(micro)
    rel = [abs(a - b) / max(abs(a), 1e-9) for a, b in zip(losses["fp32"], losses["bf16"])]
    return {
        "task": task_name, "model": loaded.manifest.id, "micro_batch": micro_batch, "batches": len(micro), "repeats": repeats,
        "mean_tokens_per_batch": tokens, "seconds_per_step": med, "ratio_bf16_over_fp32": med["bf16"] / med["fp32"],
        "loss": losses, "loss_max_relative_difference": max(rel),
        "probe": probe_description(torch.device("cpu")), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def compare_runs(runs: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    """Two finished runs of the same baseline in two precisions (run folders,
    named by label): their loss curves and dev curves as PNGs in out_dir, and
    the figures beside them (dev metric at every evaluation, the selected one,
    median seconds per step)."""
    from trainer.curves import dev_curve, loss_curve, plot_loss_curves, plot_task_curve
    from trainer.runs import EVENTS, RESULT, read_events

    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    losses, devs = {}, {}
    task = metric = ""
    for label, folder in runs.items():
        events = read_events(folder / EVENTS)
        result = json.loads((folder / RESULT).read_text(encoding="utf-8"))
        task = result["task"]
        metric = result["dev"]["primary"]
        losses[label] = loss_curve(events)
        devs[label] = dev_curve(events, task)
        steps = [e["seconds_per_step"] for e in events if e.get("event") == "step"]
        summary[label] = {"dev": devs[label], "selected": result["selected"]["label"], "value": result["dev"]["metrics"][metric]["value"],
                          "median_seconds_per_step": statistics.median(steps) if steps else None, "run": folder.name}
    plot_loss_curves(out_dir / f"precision-{task}-loss.png", losses, title=f"{task}: training loss, same batches")
    plot_task_curve(out_dir / f"precision-{task}-dev.png", task, metric, devs, title=f"{task}: dev {metric} by precision")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.benchmarks.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("FP32_RUN", "BF16_RUN"),
                        help="instead: plot two finished run folders of one baseline (float32, bf16) into --plots")
    parser.add_argument("--plots", type=Path, default=Path("."), help="with --compare: where the PNGs go")
    parser.add_argument("--data", type=Path, help="<data>/<task>/train.jsonl")
    parser.add_argument("--catalogue", type=Path)
    parser.add_argument("--task")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the prepared default model)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here too")
    args = parser.parse_args(argv)
    if args.compare:
        print(json.dumps(compare_runs({"fp32": args.compare[0], "bf16": args.compare[1]}, args.plots), indent=2))
        return 0
    if not (args.data and args.catalogue and args.task):
        parser.error("--data, --catalogue and --task are required (or --compare)")
    result = run(args.data, args.catalogue, args.task, micro_batch=args.micro_batch, batches=args.batches, repeats=args.repeats, model=args.model)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    s = result["seconds_per_step"]
    print(f"fp32 {s['fp32']:.2f} s/step, bf16 {s['bf16']:.2f} s/step: bf16/fp32 = {result['ratio_bf16_over_fp32']:.2f}; "
          f"largest relative loss difference {result['loss_max_relative_difference']:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
