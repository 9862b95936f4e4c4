"""The checkpoint folder format, shared by the trainer (which writes it), the
registry (which records it) and the inference service (which loads it).

    <root>/<id>/
        model.safetensors | adapter_model.safetensors + adapter_config.json
        config.json, generation_config.json, tokenizer files
        manifest.json

`manifest.json` names the checkpoint, its base model (for a LoRA adapter: the
base checkpoint's id and `content_sha256` of its files), the tasks and versions
it was trained on, free-form metrics and training facts, and the sha256 of
every other file. Loading verifies every hash and refuses pickle files: a
checkpoint is data, never code.

A checkpoint of kind `tgi` holds no weights: the model runs on a
text-generation-inference server, which `base` names (`endpoint`, the
`model_id` and optionally the `model_sha` its /info must report, and the
scoring `mode`: grammar or prefill). The folder still ships the model's
tokenizer files, because prompts are rendered and label paths tokenized here
exactly as for a local model (mtserve/tgi.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mtserve.errors import IntegrityError, NotFoundError, ValidationError
from mtserve.prompt import PROMPT_FORMAT, PromptStyle, check_prompt_format, check_suffixes

FORMAT = "mtserve.checkpoint/1"
MANIFEST = "manifest.json"
CHECKPOINT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy"}


@dataclass
class Manifest:
    id: str
    kind: str = "full"  # full | lora | tgi
    # lora: {"id": ..., "content_sha256": ...}; tgi: {"endpoint", "model_id", "model_sha"?, "mode"}; full: origin info
    base: dict[str, str] | None = None
    tasks: list[dict[str, Any]] = field(default_factory=list)  # [{"name": ..., "version": ...}]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # strategy, hyper-parameters, data hashes, ...
    parent: str | None = None
    created_at: str = ""
    format: str = FORMAT
    description: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = MANIFEST) -> Manifest:
        if not isinstance(data, Mapping):
            raise ValidationError(where, "must be a JSON object", type(data).__name__)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"{where}.{unknown[0]}", "unknown manifest key", unknown[0], show_value=False)
        if data.get("format") != FORMAT:
            raise ValidationError(f"{where}.format", f"must be {FORMAT!r}", data.get("format"))
        check_checkpoint_id(data.get("id"), f"{where}.id")
        if data.get("kind", "full") not in KINDS:
            raise ValidationError(f"{where}.kind", "must be full, lora or tgi", data.get("kind"))
        if data.get("kind") == "lora" and not (isinstance(data.get("base"), Mapping) and data["base"].get("id")):
            raise ValidationError(f"{where}.base", "a LoRA checkpoint names its base checkpoint id and content hash", data.get("base"))
        if data.get("kind") == "tgi":
            check_tgi_base(data.get("base"), f"{where}.base")
        training = data.get("training", {})
        if not isinstance(training, Mapping):
            raise ValidationError(f"{where}.training", "must be a mapping (how the checkpoint was trained)", training)
        if "prompt_format" in training:
            check_prompt_format(training["prompt_format"], f"{where}.training.prompt_format")
        if "suffixes" in training:
            check_suffixes(training["suffixes"], f"{where}.training.suffixes")
        if not isinstance(data.get("files", {}), Mapping):
            raise ValidationError(f"{where}.files", "must map file names to sha256", data.get("files"))
        return cls(**dict(data))

    @property
    def prompt_style(self) -> PromptStyle:
        """How to render prompts for this checkpoint: what its training
        recorded (trainer/pipeline/cache.hyper). A trained checkpoint from
        before the record is format 1; an untrained one (a base model, a
        model on a TGI server) takes today's; suffixes are natural unless
        training recorded compact, and then only the manifest's tasks have a
        marker the model learnt."""
        fmt = int(self.training.get("prompt_format", 1 if self.training else PROMPT_FORMAT))
        suffixes = self.training.get("suffixes", "natural")
        learnt = frozenset(t["name"] for t in self.tasks) if suffixes == "compact" else None
        return PromptStyle(fmt, suffixes, learnt)

    def task_versions(self) -> dict[str, int | None]:
        return {t["name"]: t.get("version") for t in self.tasks}


KINDS = ("full", "lora", "tgi")
TGI_MODES = ("grammar", "prefill")
TGI_BASE_KEYS = ("endpoint", "model_id", "model_sha", "mode")


def check_tgi_base(base: Any, where: str = "base") -> None:
    """What a `tgi` checkpoint's base must say; each rule one ValidationError."""
    from urllib.parse import urlsplit

    if not isinstance(base, Mapping):
        raise ValidationError(where, "a TGI checkpoint names its server: {endpoint, model_id, mode[, model_sha]}", base)
    unknown = sorted(set(base) - set(TGI_BASE_KEYS))
    if unknown:
        raise ValidationError(f"{where}.{unknown[0]}", f"unknown key of a TGI base (known: {', '.join(TGI_BASE_KEYS)})", unknown[0], show_value=False)
    endpoint = base.get("endpoint")
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"{where}.endpoint", "must be the http:// or https:// URL of the TGI server", endpoint)
    if parts.username or parts.password:
        raise ValidationError(f"{where}.endpoint", "must not hold credentials: the bearer token goes in inference.tgi.token_file", "<redacted>")
    if parts.query or parts.fragment:
        raise ValidationError(f"{where}.endpoint", "must have no query or fragment", endpoint)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValidationError(f"{where}.endpoint", "has a port that is not a number from 0 to 65535", endpoint) from None
    for key in ("model_id", "model_sha"):
        value = base.get(key)
        if (key == "model_id" or value is not None) and (not isinstance(value, str) or not value.strip()):
            raise ValidationError(f"{where}.{key}", "must be a non-empty string (what the server's /info reports)", value)
    if base.get("mode") not in TGI_MODES:
        raise ValidationError(f"{where}.mode", "must be grammar or prefill (docs/services.md says which to pick)", base.get("mode"))


def check_checkpoint_id(value: Any, where: str = "checkpoint id") -> str:
    if not isinstance(value, str) or not CHECKPOINT_ID_RE.match(value):
        raise ValidationError(where, f"must match {CHECKPOINT_ID_RE.pattern}", value)
    return value


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def looks_like_pickle(path: Path) -> bool:
    """By name, or by content: a pickle stream starts with the PROTO opcode
    (0x80) and a protocol number; torch.save writes a zip holding data.pkl."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head[:2] == b"PK":
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith(".pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


# Written by transformers into these files: the library version that saved
# them. It says nothing about the model, but it is part of the files' bytes, so
# it would give the same weights a new identity after every transformers
# upgrade (a LoRA adapter shipped with the repo once stopped loading on a base
# prepared with transformers 5.24 because it was trained on one from 5.23).
VERSION_STAMPED_FILES = ("config.json", "generation_config.json")
VERSION_STAMP_KEY = "transformers_version"


def drop_version_stamps(folder: str | Path) -> None:
    """Remove the saving library's version stamp from a checkpoint's config
    files (rewritten in transformers' own layout: sorted keys, indent 2)."""
    for name in VERSION_STAMPED_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and VERSION_STAMP_KEY in data:
            del data[VERSION_STAMP_KEY]
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_manifest(
    folder: str | Path,
    *,
    id: str,
    kind: str = "full",
    base: dict[str, str] | None = None,
    tasks: Iterable[Mapping[str, Any]] = (),
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    parent: str | None = None,
    description: str = "",
) -> Manifest:
    """Hash every file of `folder` and write its manifest.json (after dropping
    the library version stamps, so the files' digests name the model only)."""
    folder = Path(folder)
    check_checkpoint_id(id)
    drop_version_stamps(folder)
    for name in _files(folder):
        if looks_like_pickle(folder / name):
            raise IntegrityError(f"checkpoint {id!r}: {name} is a pickle file; checkpoints hold safetensors only")
    manifest = Manifest(
        id=id,
        kind=kind,
        base=base,
        tasks=[dict(t) for t in tasks],
        files={name: sha256_file(folder / name) for name in _files(folder)},
        metrics=dict(metrics or {}),
        training=dict(training or {}),
        parent=parent,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        description=description,
    )
    Manifest.from_mapping(asdict(manifest))  # the same rules a reader applies
    (folder / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise NotFoundError(f"checkpoint folder {str(folder)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{folder}: no {MANIFEST}; not an mtserve checkpoint (run `mtserve models import` on a plain model folder)") from None
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_mapping(data, str(path))


def manifest_sha256(folder: str | Path) -> str:
    return sha256_file(Path(folder) / MANIFEST)


def content_sha256(manifest: Manifest) -> str:
    """The identity of a checkpoint's files (not of its manifest, which holds a
    creation time): the same weights and tokenizer give the same digest on
    every machine, so an adapter can name the base it was trained on."""
    lines = "".join(f"{name}\t{digest}\n" for name, digest in sorted(manifest.files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def verify_checkpoint(folder: str | Path) -> Manifest:
    """Every file listed is present with its hash, nothing unlisted is there,
    and nothing is a pickle. Raises IntegrityError naming the file."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    present = set(_files(folder))
    for name in sorted(present):
        if looks_like_pickle(folder / name):
            raise IntegrityError(f"checkpoint {manifest.id!r}: refusing {name}: pickle files can run code; use safetensors")
    for name, digest in sorted(manifest.files.items()):
        if name not in present:
            raise IntegrityError(f"checkpoint {manifest.id!r}: {name} is listed in the manifest but missing")
        actual = sha256_file(folder / name)
        if actual != digest:
            raise IntegrityError(f"checkpoint {manifest.id!r}: {name} has sha256 {actual[:12]}..., the manifest says {digest[:12]}...")
    extra = sorted(present - set(manifest.files))
    if extra:
        raise IntegrityError(f"checkpoint {manifest.id!r}: {extra[0]} is not listed in the manifest")
    return manifest


def checkpoint_dir(root: str | Path, checkpoint_id: str) -> Path:
    return Path(root) / check_checkpoint_id(checkpoint_id)


def list_checkpoints(root: str | Path) -> list[Manifest]:
    root = Path(root)
    out = []
    for child in sorted(root.glob("*/" + MANIFEST)) if root.exists() else []:
        try:
            out.append(read_manifest(child.parent))
        except (IntegrityError, ValidationError):
            continue
    return out


class staging_dir:
    """Write a checkpoint into a temporary sibling folder and rename it into
    place on success, so a crash never leaves a half-written checkpoint under
    its final name."""

    def __init__(self, final: str | Path):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.final.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise IntegrityError(f"checkpoint folder {self.final} already exists; checkpoints are immutable")
        os.replace(self.tmp, self.final)
