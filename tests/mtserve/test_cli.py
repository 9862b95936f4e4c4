"""`mtserve classify` locally: a valid answer, and bad input as one clear
line with exit code 2, never a traceback."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtserve.tasks import builtin_catalogue_path
from mtserve_cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "mtserve" / "samples"


def run(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_classify_json_on_a_tiny_model(capsys, tiny_llama_dir):
    code = None
    try:
        main(["classify", "--model", str(tiny_llama_dir), "--input", str(SAMPLES / "call-cancelled.json"), "--json"])
    except SystemExit as exc:
        code = exc.code
    out, _ = capsys.readouterr()
    assert code in (None, 0)
    rows = json.loads(out)
    names = {r["task"] for r in rows}
    assert "rc-a" in names and "rc-i" not in names and "cs" not in names  # call tasks only, no generation
    for r in rows:
        assert r["label"] in r["scores"] and r["checkpoint"] == "tiny-llama"
        if r["task"] not in ("csc",):
            assert math.isclose(sum(r["scores"].values()), 1.0, abs_tol=1e-6)


def test_named_task_and_text(capsys, tiny_llama_dir):
    try:
        main(["classify", "--model", str(tiny_llama_dir), "-t", "ec", "--text", "Please send an invoice", "--channel", "email", "--json"])
    except SystemExit as exc:
        assert exc.code in (None, 0)
    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == ["ec"]


@pytest.mark.parametrize("args,message", [
    (["-t", "nope", "--text", "hi"], "unknown task 'nope'"),
    (["-t", "ec", "--text", "   "], "input.text: must not be empty"),
    (["-t", "rc-a", "--text", "hello"], "task 'rc-a' reads conversation input"),
    (["-t", "ec", "--text", "x", "--channel", "fax"], "input.channel: must be one of"),
    (["-t", "ec"], "--text: give --text"),
])
def test_bad_input_is_one_line(capsys, tiny_llama_dir, args, message):
    code, _out, err = run(capsys, "classify", "--model", str(tiny_llama_dir), *args)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_over_the_limit_with_truncation_off(capsys, tiny_llama_dir, tmp_path):
    data = yaml.safe_load(builtin_catalogue_path("hotel").read_text())
    data["truncation"] = [{"input_kind": "text", "max_tokens": 20}]
    cat = tmp_path / "small.yaml"
    cat.write_text(yaml.safe_dump(data))
    long_text = "please change my booking " * 20
    code, _, err = run(capsys, "classify", "--model", str(tiny_llama_dir), "--catalogue", str(cat), "-t", "ec",
                       "--text", long_text, "--channel", "email", "--no-truncate")
    assert code == 2 and "over the 20-token budget" in err and "truncation is off" in err


def test_unreadable_model_folder(capsys, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code, _, err = run(capsys, "classify", "--model", str(broken), "-t", "ec", "--text", "hi", "--channel", "email")
    assert code == 2 and "cannot load the model folder" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "classify", "--model", str(empty), "-t", "ec", "--text", "hi", "--channel", "email")
    assert code == 2 and "nor a Hugging Face model folder" in err


def test_a_plain_hugging_face_folder_is_accepted_by_path(capsys, tiny_llama_dir, tmp_path):
    import shutil

    plain = tmp_path / "Plain Model"
    shutil.copytree(tiny_llama_dir, plain)
    (plain / "manifest.json").unlink()
    try:
        main(["classify", "--model", str(plain), "-t", "ec", "--text", "invoice please", "--channel", "email", "--json"])
    except SystemExit as exc:
        assert exc.code in (None, 0)
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["checkpoint"] == "plain-model" and rows[0]["label"] in rows[0]["scores"]


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mtserve_cli", "classify", "-t", "nope", "--text", "hi"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: unknown task 'nope'; the catalogue 'hotel' has 18 tasks"


def test_the_demo_adapter_job_is_a_valid_job():
    """`mtserve demo --train` and anyone reproducing the shipped adapter read this file."""
    import yaml

    from mtserve_cli.demo import ADAPTER_JOB
    from trainer.job import parse_job

    spec = parse_job(yaml.safe_load(ADAPTER_JOB.read_text(encoding="utf-8")))
    assert spec.finetune == "lora" and spec.training.lr == 1e-3 and spec.training.precision == "auto"


def one_line_error(code, err) -> str:
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


def test_binary_files_and_malformed_yaml_are_one_line_each(capsys, tmp_path, tiny_llama_dir):
    binary = tmp_path / "blob.dat"
    binary.write_bytes(bytes(range(256)) * 8)
    err = one_line_error(*run(capsys, "classify", "--model", str(tiny_llama_dir), "--input", str(binary))[::2])
    assert err == f"error: --input: is not UTF-8 text (byte 0x80 at offset 128) (got '{binary}')"
    err = one_line_error(*run(capsys, "classify", "--model", str(tiny_llama_dir), "--catalogue", str(binary), "--text", "hi",
                              "--channel", "email")[::2])
    assert err == f"error: catalogue: is not UTF-8 text (byte 0x80 at offset 128) (got '{binary}')"
    broken = tmp_path / "broken.yaml"
    broken.write_text("tasks: [a\nname: x\n")
    err = one_line_error(*run(capsys, "classify", "--model", str(tiny_llama_dir), "--catalogue", str(broken), "--text", "hi")[::2])
    assert err == f"error: {broken}: is not valid YAML: expected ',' or ']', but got ':' at line 2, column 5"


def test_usage_errors_are_click_messages_without_a_traceback(capsys):
    code, _, err = run(capsys, "tasks", "apply")
    assert code == 2 and "Traceback" not in err and "Missing option '--file'" in err


def test_models_import_refuses_what_is_not_a_model_folder(capsys, tmp_path, tiny_llama_dir):
    def refused(folder) -> str:
        return one_line_error(*run(capsys, "models", "import", str(folder), "--id", "imported")[::2])

    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    assert refused(bad_json).startswith("error: model: has a config.json that is not valid JSON (")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_llama_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert refused(no_weights) == f"error: model: has no weights (no *.safetensors file) (got '{no_weights}')"
    (no_weights / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    assert refused(no_weights) == (
        f"error: model: has pickled weights only (pytorch_model.bin): they can run code; save them as safetensors (got '{no_weights}')"
    )
    unknown = tmp_path / "unknown-arch"
    shutil.copytree(tiny_llama_dir, unknown)
    (unknown / "config.json").write_text('{"model_type": "no-such-architecture"}')
    assert refused(unknown).startswith("error: model: has a config.json transformers cannot read (")


def test_models_import_tgi_makes_a_weightless_checkpoint_and_refuses_bad_fields(capsys, tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("MTSERVE_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    base = ["models", "import-tgi", "--endpoint", "http://127.0.0.1:8080", "--model-id", "acme/tiny", "--tokenizer", str(tiny_llama_dir)]
    code, err = run(capsys, *base, "--id", "on-tgi", "--mode", "sampling")[::2]
    assert one_line_error(code, err) == "error: base.mode: must be grammar or prefill (docs/services.md says which to pick) (got 'sampling')"
    code, err = run(capsys, *base[:-1], str(tmp_path), "--id", "on-tgi")[::2]
    assert one_line_error(code, err) == f"error: tokenizer: is not a folder with the model's tokenizer files (no tokenizer_config.json) (got '{tmp_path}')"
    main([*base, "--id", "on-tgi", "--mode", "prefill"])
    folder = Path(capsys.readouterr().out.strip())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["kind"], manifest["base"]) == ("tgi", {"endpoint": "http://127.0.0.1:8080", "model_id": "acme/tiny", "mode": "prefill"})
    assert "tokenizer_config.json" in manifest["files"] and not [f for f in manifest["files"] if f.endswith(".safetensors")]
    # a local run has no model to load: one line saying where the model runs
    code, err = run(capsys, "classify", "--model", str(folder), "--task", "csa", "--input", str(SAMPLES / "call-cancelled.json"))[::2]
    assert one_line_error(code, err).startswith("error: checkpoint 'on-tgi' has no weights here: its model runs on the TGI server at http://127.0.0.1:8080")
