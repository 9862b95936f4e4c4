"""`mtserve train run`: a two-task toy job end to end (the checkpoint loads
and scores), one-line errors with exit code 2, and a real crash: the CLI is
SIGKILLed mid-run, resumed with --resume, and ends on exactly the weights of
an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mtserve.checkpoints import read_manifest
from mtserve.engine import Engine, Request
from mtserve.inputs import Text
from mtserve.models import load_checkpoint
from mtserve.tasks import Channel, load_catalogue
from mtserve_cli import main
from trainer.job import parse_job
from trainer.pipeline import run_job
from trainer.runs import read_events
from trainer.toy import toy_job, write_toy_data


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread in-process, as in the CLI subprocesses (OMP_NUM_THREADS=1):
    the resumed and the uninterrupted run must do the very same arithmetic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_job(folder: Path, base: Path, **over) -> Path:
    write_toy_data(folder, tasks=("sentiment", "topic"), train=16, dev=6)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(toy_job(folder, base_model=str(base), **over)), encoding="utf-8")
    return path


def test_train_run_two_task_toy_job_checkpoint_loads_and_scores(tmp_path, tiny_llama_dir, capsys):
    job = write_job(tmp_path, tiny_llama_dir)
    main(["train", "run", "-f", str(job), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "two_stage" and [r["task"] for r in result["rows"]] == ["sentiment", "topic"]
    assert len(result["checkpoints"]) == 1
    lm = load_checkpoint(result["checkpoints"][0], device="cpu", dtype="float32")
    assert [t["name"] for t in lm.manifest.tasks] == ["sentiment", "topic"]
    cat = load_catalogue(tmp_path / "catalogue.yaml")
    engine = Engine(lm.model, lm.tokenizer, cat.truncation)
    preds = engine.predict([Request(cat.task(n), Text("The porter was lovely.", Channel.REVIEW)) for n in ("sentiment", "topic")])
    assert preds[0].label in ("positive", "negative") and preds[1].label in ("room", "food", "staff")
    # the table form (from the run cache this time)
    main(["train", "run", "-f", str(job)])
    out = capsys.readouterr().out
    for text in ("zero-shot", "baseline", "multi-task", "ratio", "qualified", "sentiment", "checkpoint: "):
        assert text in out
    assert result["checkpoints"][0] in out.replace("\n", "")


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "mtserve"), *args], capture_output=True, text=True, env=cli_env(env_extra), timeout=300, check=False)


def cli_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(extra or {})
    return env


def test_errors_are_one_line_with_exit_code_2(tmp_path, tiny_llama_dir, capsys):
    job = write_job(tmp_path, tiny_llama_dir, training={"lrate": 1})
    with pytest.raises(SystemExit) as info:
        main(["train", "run", "-f", str(job)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.count("\n") == 0
    assert err.startswith("error: training.lrate: unknown key")
    with pytest.raises(SystemExit) as info:
        main(["train", "run", "-f", str(tmp_path / "missing.yaml")])
    assert info.value.code == 2 and "cannot read file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "run", "-f", str(job), "--resume", "--restart"])
    assert info.value.code == 2


def test_validate_prints_the_resolved_spec(tmp_path, tiny_llama_dir, capsys):
    job = write_job(tmp_path, tiny_llama_dir)
    main(["train", "validate", "-f", str(job), "--json"])
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["training"]["micro_batch"] == 2 and resolved["mixture"]["tau"] == 3.33


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_llama_dir):
    over = {"baselines": {"train": False}, "max_steps": 500, "mixture": {"stage1_steps": 4, "stage2_steps": 60},
                "training": {"lr": 1e-3, "micro_batch": 2, "grad_accum": 2, "warmup_ratio": 0.1, "state_every_steps": 5, "length_group_steps": 4}}
    job = write_job(tmp_path / "killed", tiny_llama_dir, **over)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mtserve"), "train", "run", "-f", str(job), "-q"],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs = tmp_path / "killed" / "runs"
    deadline = time.monotonic() + 240
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for log in runs.glob("mt-*/events.jsonl"):
                saved = [e for e in read_events(log) if e["event"] == "state_saved" and e["stage"] == "stage2"]
                if saved and saved[-1]["step"] >= 10:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = saved[-1]["step"]
                    break
            if killed_at:
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and not killed_at:
            proc.kill()
        proc.wait()
    assert killed_at, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    run_dir = next(runs.glob("mt-*"))
    assert not (run_dir / "result.json").exists()

    refused = run_cli("train", "run", "-f", str(job), "-q")
    assert refused.returncode == 2 and "--resume" in refused.stderr and refused.stderr.count("\n") == 1

    resumed = run_cli("train", "run", "-f", str(job), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads(resumed.stdout)
    events = read_events(run_dir / "events.jsonl")
    resumes = [e for e in events if e["event"] == "resumed"]
    assert resumes and resumes[0]["stage"] == "stage2" and resumes[0]["step"] >= killed_at

    reference = run_job(parse_job(toy_job(tmp_path / "clean", base_model=str(tiny_llama_dir), **over), write_job(tmp_path / "clean", tiny_llama_dir, **over).parent))
    ours = read_manifest(result["checkpoints"][0])
    theirs = read_manifest(reference.checkpoints[0])
    assert ours.id == theirs.id
    assert ours.files["model.safetensors"] == theirs.files["model.safetensors"]  # bit for bit
