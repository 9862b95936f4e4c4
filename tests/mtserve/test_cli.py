"""`mtserve classify` locally: a valid answer, and bad input as one clear
line with exit code 2, never a traceback."""

from __future__ import annotations

import json
import math
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
