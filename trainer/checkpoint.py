"""Training state (to resume after a crash) and final checkpoints, without
pickle anywhere.

Resume state, in `<run>/state-<stage>-<step>/` with `<run>/LATEST` naming the
current one (written last, atomically; older states are then deleted):

    weights.safetensors     the trainable parameters (all of them, or the LoRA adapter)
    optimizer.safetensors   AdamW's per-parameter tensors (exp_avg, exp_avg_sq, step)
    optimizer.json          its parameter groups (hyper-parameters, parameter indices)
    rng.safetensors         torch's CPU (and CUDA) generator states
    meta.json               stage, step, the sampler state at the start of the
                            current length-grouping window, per-task consumption,
                            evaluation history, best evaluation, counters

Final checkpoints use the mtserve.checkpoints format (staging folder, manifest
with the sha256 of every file): a full model (`model.safetensors`, config,
tokenizer) or a LoRA adapter (`adapter_model.safetensors`, `adapter_config.json`,
tokenizer) whose manifest names its base checkpoint and that base's manifest
hash.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mtserve.checkpoints import Manifest, checkpoint_dir, content_sha256, read_manifest, staging_dir, verify_checkpoint, write_manifest
from mtserve.errors import IntegrityError

STATE_VERSION = 1
LATEST = "LATEST"


# -- small atomic writers ------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            json.dump(data, fp, ensure_ascii=False, allow_nan=False, sort_keys=True)
            fp.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


# -- weights -------------------------------------------------------------------------


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Named trainable parameters; tied weights appear once (named_parameters dedups)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_weights(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_tensors(trainable_parameters(model), path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    tensors = load_file(str(path))
    params = trainable_parameters(model)
    missing = sorted(set(params) - set(tensors))
    extra = sorted(set(tensors) - set(params))
    if missing or extra:
        raise IntegrityError(f"{path}: does not match the model's trainable parameters (missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.device, p.dtype))


def prune_best(run_dir: Path, keep: str | None) -> None:
    """Delete best-weight snapshots other than `keep`."""
    folder = Path(run_dir) / "best"
    if not folder.is_dir():
        return
    for f in folder.glob("*.safetensors"):
        if f.name != keep:
            f.unlink(missing_ok=True)


# -- optimizer -------------------------------------------------------------------------


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    groups = []
    for g in state.optimizer_meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    per_param: dict[int, dict[str, Any]] = {}
    for key, tensor in state.optimizer_tensors.items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = tensor
    for idx, values in state.optimizer_meta.get("scalars", {}).items():
        per_param.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


# -- RNG -------------------------------------------------------------------------------


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = st
    return out


def restore_rng(state: TrainState) -> None:
    torch.set_rng_state(state.rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [state.rng[k] for k in sorted(state.rng) if k.startswith("torch_cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


# -- the resume state ------------------------------------------------------------------


@dataclass
class TrainState:
    folder: Path
    meta: dict[str, Any]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    rng: dict[str, torch.Tensor]


def save_train_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: Mapping[str, Any]) -> Path:
    """Write a new state folder, point LATEST at it, delete the older ones. A
    crash at any moment leaves LATEST on a complete state."""
    run_dir = Path(run_dir)
    name = f"state-{meta['stage_index']:02d}-{meta['steps_total']:08d}"
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "weights.safetensors")
    tensors, opt_meta = _optimizer_split(optimizer)
    _save_tensors(tensors, tmp / "optimizer.safetensors")
    write_json(tmp / "optimizer.json", opt_meta)
    _save_tensors(_rng_tensors(), tmp / "rng.safetensors")
    write_json(tmp / "meta.json", {"version": STATE_VERSION, **meta})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_json(run_dir / LATEST, {"state": name})
    for old in run_dir.glob("state-*"):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_state_dir(run_dir: Path) -> Path | None:
    run_dir = Path(run_dir)
    try:
        name = read_json(run_dir / LATEST)["state"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    folder = run_dir / name
    return folder if (folder / "meta.json").exists() else None


def read_state_meta(run_dir: Path) -> dict[str, Any] | None:
    folder = latest_state_dir(run_dir)
    return None if folder is None else read_json(folder / "meta.json")


def load_train_state(run_dir: Path, model: torch.nn.Module) -> TrainState | None:
    """The latest state, its weights already copied into `model`; None if there is none."""
    folder = latest_state_dir(run_dir)
    if folder is None:
        return None
    meta = read_json(folder / "meta.json")
    if meta.get("version") != STATE_VERSION:
        raise IntegrityError(f"{folder}: training state version {meta.get('version')}, this code reads {STATE_VERSION}")
    load_weights(model, folder / "weights.safetensors")
    return TrainState(
        folder=folder,
        meta=meta,
        optimizer_tensors=load_file(str(folder / "optimizer.safetensors")),
        optimizer_meta=read_json(folder / "optimizer.json"),
        rng=load_file(str(folder / "rng.safetensors")),
    )


def clear_train_state(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    (run_dir / LATEST).unlink(missing_ok=True)
    for old in run_dir.glob("state-*"):
        shutil.rmtree(old, ignore_errors=True)
    for old in run_dir.glob(".state-*"):
        shutil.rmtree(old, ignore_errors=True)


# -- final checkpoints ---------------------------------------------------------------------


def parameter_count(folder: Path) -> int:
    """Parameters of a checkpoint's weights, read from the safetensors headers
    alone (no tensor is loaded): the scale `trainer.job.default_lr` goes by."""
    from safetensors import safe_open

    total = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise IntegrityError(f"checkpoint {folder} holds no .safetensors weights")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f:
                n = 1
                for dim in f.get_slice(name).get_shape():
                    n *= dim
                total += n
    return total


def base_identity(base_dir: Path) -> dict[str, str]:
    """How a checkpoint names its base: id and the digest of its files."""
    manifest = read_manifest(base_dir)
    return {"id": manifest.id, "content_sha256": content_sha256(manifest)}


def write_checkpoint(
    root: Path,
    checkpoint_id: str,
    model: Any,
    tokenizer: Any,
    *,
    base_dir: Path,
    lora: bool,
    tasks: list[dict[str, Any]],
    metrics: Mapping[str, Any],
    training: Mapping[str, Any],
    description: str = "",
) -> Path:
    """Write a checkpoint under root/<id> (staged, then renamed into place). A
    LoRA model is written as its adapter; a full model as safetensors weights.
    If the folder already exists (a run that crashed after writing it), it is
    verified and reused."""
    final = checkpoint_dir(root, checkpoint_id)
    if (final / "manifest.json").exists():
        verify_checkpoint(final)
        return final
    base = base_identity(base_dir)
    with staging_dir(final) as tmp:
        if lora:
            model.save_pretrained(str(tmp), safe_serialization=True)
            (tmp / "README.md").unlink(missing_ok=True)  # peft's model card template: noise
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_manifest(
            tmp,
            id=checkpoint_id,
            kind="lora" if lora else "full",
            base=base,
            tasks=tasks,
            metrics=metrics,
            training=training,
            parent=base["id"],
            description=description,
        )
    return final


def read_checkpoint_manifest(folder: Path) -> Manifest:
    return read_manifest(folder)


__all__ = [
    "TrainState",
    "base_identity",
    "clear_train_state",
    "latest_state_dir",
    "load_optimizer",
    "load_train_state",
    "load_weights",
    "prune_best",
    "read_json",
    "read_state_meta",
    "restore_rng",
    "save_train_state",
    "save_weights",
    "write_checkpoint",
    "write_json",
]
