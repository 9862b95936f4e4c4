"""Resume state and final checkpoints: no pickle anywhere, exact round trips,
and checkpoints that mtserve.models.load_checkpoint and the Engine accept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtserve.checkpoints import looks_like_pickle, read_manifest, verify_checkpoint
from mtserve.engine import Engine, Request
from mtserve.inputs import Text
from mtserve.models import build_tiny_checkpoint, load_checkpoint
from mtserve.tasks import Channel, parse_catalogue
from trainer import checkpoint as ck
from trainer.toy import TOY_CATALOGUE
from trainer.train import build_optimizer

TOY = parse_catalogue(TOY_CATALOGUE)


def one_step(model) -> torch.optim.Optimizer:
    opt = build_optimizer(model, 1e-3, 0.01)
    ids = torch.arange(10, 30).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    return opt


def no_pickle(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert not looks_like_pickle(p), p
        assert p.suffix in {".safetensors", ".json", ".jinja", ".txt", ".model", ".md", ""} or p.name == "LATEST", p


def test_train_state_round_trip_without_pickle(tiny_llama_dir, tmp_path):
    lm = load_checkpoint(tiny_llama_dir, device="cpu", dtype="float32")
    opt = one_step(lm.model)
    torch.manual_seed(123)
    meta = {"stage_index": 0, "steps_total": 1, "stage": "stage2", "step": 1, "nested": {"sampler": [1, 2, 3]}}
    ck.save_train_state(tmp_path, lm.model, opt, meta)
    expected_draw = torch.rand(3)
    saved = {k: v.clone() for k, v in lm.model.state_dict().items()}
    saved_opt = opt.state_dict()
    no_pickle(tmp_path)

    other = load_checkpoint(tiny_llama_dir, device="cpu", dtype="float32")
    state = ck.load_train_state(tmp_path, other.model)
    assert state is not None and state.meta["nested"] == {"sampler": [1, 2, 3]} and state.meta["version"] == ck.STATE_VERSION
    assert all(torch.equal(saved[k], v) for k, v in other.model.state_dict().items())
    opt2 = build_optimizer(other.model, 1e-3, 0.01)
    ck.load_optimizer(opt2, state)
    restored = opt2.state_dict()
    assert restored["param_groups"] == saved_opt["param_groups"]
    for idx, st in saved_opt["state"].items():
        for key, value in st.items():
            assert torch.equal(restored["state"][idx][key], value), (idx, key)
    ck.restore_rng(state)
    assert torch.equal(torch.rand(3), expected_draw)


def test_latest_pointer_and_old_states(tiny_llama_dir, tmp_path):
    lm = load_checkpoint(tiny_llama_dir, device="cpu", dtype="float32")
    opt = one_step(lm.model)
    assert ck.load_train_state(tmp_path, lm.model) is None
    ck.save_train_state(tmp_path, lm.model, opt, {"stage_index": 0, "steps_total": 1})
    ck.save_train_state(tmp_path, lm.model, opt, {"stage_index": 0, "steps_total": 2})
    assert sorted(p.name for p in tmp_path.glob("state-*")) == ["state-00-00000002"]
    (tmp_path / ".state-00-00000003.tmp").mkdir()  # a save killed half-way
    assert ck.read_state_meta(tmp_path)["steps_total"] == 2
    (tmp_path / "LATEST").write_text('{"state": "state-00-00000099"}')
    assert ck.read_state_meta(tmp_path) is None
    ck.clear_train_state(tmp_path)
    assert not list(tmp_path.glob("*state-*")) and not (tmp_path / "LATEST").exists()


def test_weight_snapshot_refuses_a_mismatch(tiny_llama_dir, tiny_qwen_dir, tmp_path):
    from mtserve.errors import IntegrityError

    llama = load_checkpoint(tiny_llama_dir, device="cpu", dtype="float32").model
    qwen = load_checkpoint(tiny_qwen_dir, device="cpu", dtype="float32").model
    ck.save_weights(llama, tmp_path / "w.safetensors")
    with pytest.raises(IntegrityError, match="trainable parameters"):
        ck.load_weights(qwen, tmp_path / "w.safetensors")


def score(folder: Path, root: Path | None = None):
    lm = load_checkpoint(folder, device="cpu", dtype="float32", root=root)
    engine = Engine(lm.model, lm.tokenizer, TOY.truncation)
    out = engine.predict([Request(TOY.task("sentiment"), Text("The bed was lovely.", Channel.REVIEW))])[0]
    assert out.label in {"positive", "negative"} and abs(sum(s.probability for s in out.scores) - 1) < 1e-6
    return lm, out


def test_full_checkpoint_loads_and_scores(tiny_llama_dir, tmp_path):
    lm = load_checkpoint(tiny_llama_dir, device="cpu", dtype="float32")
    one_step(lm.model)
    tasks = [{"name": "sentiment", "version": None, "labels": [{"name": "positive", "verbalizer": "positive"}]}]
    path = ck.write_checkpoint(tmp_path, "toy-full", lm.model, lm.tokenizer, base_dir=tiny_llama_dir, lora=False, tasks=tasks,
                               metrics={"dev": {"sentiment": {"value": 0.5}}}, training={"method": "two_stage"})
    manifest = verify_checkpoint(path)
    assert manifest.kind == "full" and manifest.parent == "tiny-llama"
    assert manifest.base == ck.base_identity(tiny_llama_dir)
    assert "model.safetensors" in manifest.files and manifest.tasks == tasks
    no_pickle(path)
    loaded, _ = score(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), lm.model.state_dict().values()))
    # a crash after the rename: the next attempt verifies and reuses the folder
    assert ck.write_checkpoint(tmp_path, "toy-full", lm.model, lm.tokenizer, base_dir=tiny_llama_dir, lora=False,
                               tasks=tasks, metrics={}, training={}) == path


def test_lora_checkpoint_is_an_adapter_on_a_named_base(smollm2_tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_checkpoint(tmp_path / "tiny", smollm2_tok, checkpoint_id="tiny")
    lm = load_checkpoint(base, device="cpu", dtype="float32")
    model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)  # a non-zero adapter, so merging changes the model
    path = ck.write_checkpoint(tmp_path, "toy-lora", model, lm.tokenizer, base_dir=base, lora=True, tasks=[], metrics={}, training={})
    manifest = read_manifest(path)
    assert manifest.kind == "lora" and manifest.base == ck.base_identity(base)
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(manifest.files) and "model.safetensors" not in manifest.files
    assert json.loads((path / "adapter_config.json").read_text())["r"] == 4
    no_pickle(path)
    _, adapted = score(path)
    _, plain = score(base)
    assert adapted.scores != plain.scores


def test_lora_checkpoint_refuses_a_different_base_under_the_same_id(smollm2_tok, tmp_path):
    """The adapter names its base by content, not by path or manifest: a base
    rebuilt with other weights under the same id is refused, naming it."""
    import shutil

    from peft import LoraConfig, get_peft_model

    from mtserve.errors import IntegrityError

    base = build_tiny_checkpoint(tmp_path / "tiny", smollm2_tok, checkpoint_id="tiny", seed=0)
    lm = load_checkpoint(base, device="cpu", dtype="float32")
    model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    path = ck.write_checkpoint(tmp_path, "toy-lora2", model, lm.tokenizer, base_dir=base, lora=True, tasks=[], metrics={}, training={})
    load_checkpoint(path, device="cpu")  # the right base: fine
    shutil.rmtree(base)
    build_tiny_checkpoint(tmp_path / "tiny", smollm2_tok, checkpoint_id="tiny", seed=1)
    with pytest.raises(IntegrityError, match="base 'tiny' .* is not the model it was trained on"):
        load_checkpoint(path, device="cpu")
