"""The checkpoint format: manifests, hash verification, no pickle."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from mtserve.checkpoints import content_sha256, list_checkpoints, read_manifest, staging_dir, verify_checkpoint, write_manifest
from mtserve.errors import IntegrityError, ValidationError
from mtserve.models import load_checkpoint


def make(tmp_path, name="ck"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    write_manifest(folder, id=name, tasks=[{"name": "rc-a", "version": 2}], metrics={"rc-a": {"accuracy": 0.9}})
    return folder


def test_manifest_lists_every_file_with_its_hash(tmp_path):
    folder = make(tmp_path)
    m = verify_checkpoint(folder)
    assert set(m.files) == {"model.safetensors", "config.json"}
    assert m.task_versions() == {"rc-a": 2} and m.format == "mtserve.checkpoint/1" and m.created_at


def test_tampered_file_is_refused_naming_it(tmp_path):
    folder = make(tmp_path)
    (folder / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(IntegrityError, match="model.safetensors has sha256"):
        verify_checkpoint(folder)


def test_missing_and_unlisted_files_are_refused(tmp_path):
    folder = make(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(IntegrityError, match="config.json is listed in the manifest but missing"):
        verify_checkpoint(folder)
    folder = make(tmp_path, "ck2")
    (folder / "extra.txt").write_text("x")
    with pytest.raises(IntegrityError, match="extra.txt is not listed"):
        verify_checkpoint(folder)


@pytest.mark.parametrize("name,content", [
    ("model.bin", b"anything"),
    ("weights.safetensors", pickle.dumps({"a": 1}, protocol=4)),  # a pickle under an innocent name
])
def test_pickle_files_are_refused(tmp_path, name, content):
    folder = make(tmp_path)
    (folder / name).write_bytes(content)
    with pytest.raises(IntegrityError, match=f"refusing {name}: pickle"):
        verify_checkpoint(folder)
    with pytest.raises(IntegrityError, match="is a pickle file"):
        write_manifest(folder, id="ck")


def test_bad_manifest_fields(tmp_path):
    folder = make(tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    data["id"] = "Bad Id"
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError, match="id: must match"):
        read_manifest(folder)
    data["id"], data["surprise"] = "ck", 1
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError, match="surprise: unknown manifest key"):
        read_manifest(folder)


def test_a_checkpoint_is_rendered_in_the_prompt_style_it_was_trained_in(tmp_path):
    from mtserve.prompt import DEFAULT_STYLE, PromptStyle

    assert read_manifest(make(tmp_path, "base")).prompt_style == DEFAULT_STYLE  # untrained: today's format, natural
    folder = make(tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    for training, expected in (
        ({"method": "single_task"}, PromptStyle(1)),  # a trained checkpoint without the record predates it: format 1
        ({"prompt_format": 1}, PromptStyle(1)),
        ({"prompt_format": 2}, PromptStyle(2)),
        ({"prompt_format": 2, "suffixes": "compact"}, PromptStyle(2, "compact", frozenset({"rc-a"}))),  # markers learnt: its tasks
    ):
        data["training"] = training
        (folder / "manifest.json").write_text(json.dumps(data))
        assert read_manifest(folder).prompt_style == expected
    for training, refusal in (
        ({"prompt_format": 9}, r"training\.prompt_format: must be one of 1, 2"),  # from a newer mtserve
        ({"prompt_format": 2, "suffixes": "terse"}, r"training\.suffixes: must be one of natural, compact.*terse"),
        (["compact"], r"training: must be a mapping"),
    ):
        data["training"] = training
        (folder / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ValidationError, match=refusal):
            read_manifest(folder)


def test_staging_dir_is_atomic_and_immutable(tmp_path):
    final = tmp_path / "root" / "ck"
    with pytest.raises(RuntimeError), staging_dir(final) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("crash mid-write")
    assert not final.exists() and list((tmp_path / "root").iterdir()) == []
    with staging_dir(final) as tmp:
        (tmp / "f").write_text("x")
    assert (final / "f").exists()
    with pytest.raises(IntegrityError, match="already exists"), staging_dir(final) as tmp:
        pass


def test_list_checkpoints_skips_non_checkpoints(tmp_path):
    make(tmp_path, "a1")
    (tmp_path / "junk").mkdir()
    assert [m.id for m in list_checkpoints(tmp_path)] == ["a1"]


def test_loading_a_tampered_model_refuses(tiny_llama_dir, tmp_path):
    import shutil

    copy = tmp_path / "tiny-copy"
    shutil.copytree(tiny_llama_dir, copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(IntegrityError, match="model.safetensors"):
        load_checkpoint(copy, device="cpu")


def test_the_saving_library_version_does_not_change_a_checkpoints_identity(tmp_path):
    """Same weights and config saved by two transformers versions: one digest
    (an adapter names its base by this digest, across machines and upgrades)."""
    digests = []
    for version in ("5.23.0", "5.24.0"):
        folder = tmp_path / f"v{version}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "transformers_version": version}
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "transformers_version": version}))
        manifest = write_manifest(folder, id=f"ck-{version}")
        assert "transformers_version" not in (folder / "config.json").read_text()
        assert json.loads((folder / "config.json").read_text()) == {"architectures": ["LlamaForCausalLM"], "hidden_size": 64}
        verify_checkpoint(folder)  # the digests are of the files as rewritten
        digests.append(content_sha256(manifest))
    assert digests[0] == digests[1]
    (tmp_path / "v5.24.0" / "model.safetensors").write_bytes(b"other weights")
    assert content_sha256(write_manifest(tmp_path / "v5.24.0", id="ck-other")) != digests[0]  # the weights still count


def test_serving_loads_only_verified_checkpoints_the_cli_also_plain_folders(tiny_llama_dir, tmp_path):
    from mtserve.models import load_model_folder

    plain = tmp_path / "plain"
    shutil.copytree(tiny_llama_dir, plain)
    (plain / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match="no manifest.json; not an mtserve checkpoint"):
        load_checkpoint(plain, device="cpu", dtype="float32")
    loaded = load_model_folder(plain, device="cpu", dtype="float32")  # a local run, said to be unverified
    assert loaded.manifest.description == "plain Hugging Face folder, not verified"
    assert load_model_folder(tiny_llama_dir, device="cpu", dtype="float32").manifest.id == "tiny-llama"


TGI_BASE = {"endpoint": "https://tgi.internal:8443", "model_id": "Qwen/Qwen2-7B-Instruct", "mode": "grammar"}


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"base": None}, "base", "a TGI checkpoint names its server"),
        ({"base": {**TGI_BASE, "adapter": "x"}}, "base.adapter", "unknown key of a TGI base"),
        ({"base": {**TGI_BASE, "endpoint": "tgi.internal:8443"}}, "base.endpoint", "must be the http:// or https:// URL"),
        ({"base": {**TGI_BASE, "endpoint": "ftp://tgi.internal"}}, "base.endpoint", "must be the http:// or https:// URL"),
        ({"base": {**TGI_BASE, "endpoint": "https://user:pw@tgi.internal"}}, "base.endpoint", "must not hold credentials"),
        ({"base": {**TGI_BASE, "endpoint": "https://tgi.internal/?model=x"}}, "base.endpoint", "must have no query or fragment"),
        ({"base": {**TGI_BASE, "endpoint": "https://tgi.internal:99999"}}, "base.endpoint", "has a port that is not a number"),
        ({"base": {**TGI_BASE, "model_id": ""}}, "base.model_id", "must be a non-empty string"),
        ({"base": {k: v for k, v in TGI_BASE.items() if k != "model_id"}}, "base.model_id", "must be a non-empty string"),
        ({"base": {**TGI_BASE, "model_sha": 7}}, "base.model_sha", "must be a non-empty string"),
        ({"base": {**TGI_BASE, "mode": "sampling"}}, "base.mode", "must be grammar or prefill"),
        ({"kind": "vllm"}, "kind", "must be full, lora or tgi"),
    ],
)
def test_a_tgi_manifest_names_its_server_each_rule_with_its_message(tmp_path, change, field, rule):
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text("{}")
    write_manifest(folder, id="served", kind="tgi", base=dict(TGI_BASE))
    assert read_manifest(folder).base == TGI_BASE
    data = json.loads((folder / "manifest.json").read_text())
    data.update(change)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError) as caught:
        read_manifest(folder)
    assert caught.value.field.endswith(f"manifest.json.{field}") and rule in caught.value.rule
    if "credentials" in rule:
        assert "pw" not in str(caught.value)  # the password is never quoted back


def test_a_tgi_checkpoint_has_no_weights_to_load_here(tmp_path):
    from mtserve.errors import PreconditionError

    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text("{}")
    write_manifest(folder, id="served", kind="tgi", base={**TGI_BASE, "model_sha": "abc123", "mode": "prefill"})
    with pytest.raises(PreconditionError, match="its model runs on the TGI server at https://tgi.internal:8443"):
        load_checkpoint(folder, device="cpu")
