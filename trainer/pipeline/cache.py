"""The run cache as the stages use it: what goes into a run's key, opening a
run (cached, start or resume: rank 0 decides), its lock, and finishing it.

A key holds the resolved settings that change what a run produces (the plan
of its stages, the precision `auto` chose, the prompt format, how dev sets are
chosen), never logging cadence or output paths (trainer.runs)."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtserve.errors import PreconditionError
from mtserve.precision import probe_description
from mtserve.prompt import PromptStyle, prompt_format_for
from mtserve.tasks import Task
from trainer import checkpoint as ck
from trainer.data import DEV_SELECTION
from trainer.pipeline.context import Context
from trainer.results import BaseRef, PrecisionRecord
from trainer.runs import EVENTS, EventLog, run_key
from trainer.train import TrainSet

log = logging.getLogger(__name__)


# -- what goes into keys --------------------------------------------------------------------


def prompt_style(ctx: Context, tasks: Sequence[Task], *, multitask: bool) -> PromptStyle:
    """How a run renders its tasks: the prompt format of its own tasks (a
    baseline's one, a mixture's all; stage 0 renders none), and the job's
    mixture.suffixes for a multi-task run. Baselines always ask in natural
    language: they are what a compact mixture is measured against."""
    suffixes = ctx.spec.mixture.suffixes if multitask else "natural"
    learnt = frozenset(t.name for t in tasks) if suffixes == "compact" else None
    return PromptStyle(prompt_format_for(tasks), suffixes, learnt)


def hyper(ctx: Context, style: PromptStyle) -> dict[str, Any]:
    """The settings that change what training produces, resolved: the precision
    `auto` chose, the run's prompt style (suffixes only when compact, so a
    natural run keeps the key it always had), the dtype evaluation scores in
    (not logging cadence, not output paths)."""
    spec = ctx.spec
    t = spec.training.model_dump(mode="json")
    t.pop("state_every_steps")
    t.pop("log_every_steps")
    t["precision"] = ctx.precision
    t["lr"] = ctx.lr
    return {"training": t, "max_seq_len": spec.max_seq_len, "seed": spec.seed, "finetune": spec.finetune,
            "lora": spec.lora_settings.model_dump(mode="json") if spec.lora_settings else None,
            "prompt_format": style.format, **({"suffixes": style.suffixes} if style.compact else {}), "eval_dtype": ctx.eval_dtype}


def world_key(ctx: Context) -> int | dict[str, Any]:
    """The `world` entry of a training run's key. The global batch is the same
    at any world size, yet ranks still change what a run produces: the gradient
    all-reduce sums in another order (float32 differences of ~1e-7 a step that
    training can grow), and ranks > 0 draw other dropout masks. So the size
    stays in the key. One process keeps the 1 its keys always held (cached runs
    stay valid); several ranks write a mapping, because before the batch was
    split a key with `"world": W` meant W x micro_batch x grad_accum examples
    a step, and such runs must not be taken for these."""
    world = ctx.dist.world
    return 1 if world == 1 else {"ranks": world, "batch": "global"}


def eval_key(ctx: Context, **extra: Any) -> dict[str, Any]:
    """How dev sets are chosen and evaluated: part of every key that evaluates."""
    e = ctx.spec.eval
    return {"dev_selection": DEV_SELECTION, "dev_cap": e.dev_cap, "test": e.test, **extra}


# -- records beside the results (not in keys) ----------------------------------------------------


def base_ref(base_dir: Path) -> BaseRef:
    return BaseRef.from_dict(ck.base_identity(base_dir))


def precision_record(ctx: Context) -> PrecisionRecord:
    return PrecisionRecord(requested=ctx.spec.training.precision, resolved=ctx.precision, probe=probe_description(ctx.device),
                           master_weights="float32", eval_dtype=ctx.eval_dtype)


def versions() -> dict[str, str]:
    import transformers

    import mtserve

    return {"torch": torch.__version__, "transformers": transformers.__version__, "mtserve": getattr(mtserve, "__version__", "")}


def data_record(ctx: Context, task: str, data: Mapping[str, TrainSet]) -> dict[str, Any]:
    """For manifests: every split's file, digest and size, what training used and dropped, what dev evaluated."""
    out: dict[str, Any] = {}
    for split, sd in ctx.data[task].items():
        out[split] = {"sha256": sd.sha256, "examples": len(sd.examples), "bad_lines": len(sd.bad_lines), "file": str(sd.path)}
    out["train"]["used"] = len(ctx.train_examples(task))
    if task in data and data[task].dropped:
        out["train"]["dropped"] = data[task].dropped
    out["dev"]["evaluated"] = len(ctx.dev_examples(task))
    return out


# -- a run's life ------------------------------------------------------------------------------


@dataclass
class OpenRun:
    run_id: str
    key: str
    payload: dict[str, Any]
    action: str  # cached | start | resume
    emit: EventLog


def open_run(ctx: Context, kind: str, label: str, payload: dict[str, Any]) -> OpenRun:
    key = run_key(payload)
    run_id = f"{kind}-{label}-{key[:12]}"
    action = ctx.store.prepare(run_id, payload, resume=ctx.resume, restart=ctx.restart) if ctx.dist.main else "start"
    if ctx.dist.world > 1:  # rank 0 decides; a tensor, not a pickled object
        import torch.distributed as dist

        actions = ["cached", "start", "resume"]
        code = torch.tensor([actions.index(action)], device=ctx.device)
        dist.broadcast(code, src=0)
        action = actions[int(code.item())]
    path = ctx.store.dir(run_id) / EVENTS if ctx.dist.main else None
    return OpenRun(run_id, key, payload, action, ctx.emit.child(path, run=run_id, kind=kind))


def stored(ctx: Context, run_id: str) -> dict[str, Any]:
    """The result.json of a finished run: a cache hit, or what rank 0 wrote."""
    result = ctx.store.result(run_id)
    if result is None:
        raise PreconditionError(f"run {run_id} has no result in {ctx.store.dir(run_id)}")
    return result


@contextlib.contextmanager
def run_lock(ctx: Context, run_id: str) -> Iterator[None]:
    """The run lock on rank 0 (other ranks never write the run folder)."""
    with ctx.store.lock(run_id) if ctx.dist.main else contextlib.nullcontext():
        yield


def finish(ctx: Context, run: OpenRun, result: Mapping[str, Any]) -> None:
    """Write the result (the run is finished), then drop what only a resume
    needed: the training state and the best-weight snapshots (a full model's
    state is three times its size)."""
    ctx.store.write_result(run.run_id, result)
    folder = ctx.store.dir(run.run_id)
    ck.clear_train_state(folder)
    shutil.rmtree(folder / "best", ignore_errors=True)
    _write_curves(folder)


def _write_curves(folder: Path) -> None:
    """TensorBoard event files of a run, from its events (`tensorboard --logdir
    <runs_dir>`); a missing optional extra or a plotting failure never fails a run."""
    from trainer.curves import write_tensorboard
    from trainer.runs import read_events

    try:
        write_tensorboard(read_events(folder / EVENTS), folder / "tensorboard")
    except Exception as exc:  # noqa: BLE001 - the run's result is written already; curves are a view of it
        log.warning("could not write TensorBoard files for %s: %s", folder.name, exc)
