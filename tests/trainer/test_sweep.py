"""The learning-rate sweep (trainer.sweep): grid points as single-task job
specs, the choice on dev, one tiny sweep end to end (cached on a second run,
reused by the job it came from), and `mtserve train sweep`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtserve_cli import app, main
from trainer.job import LoraSpec, MixtureSpec, parse_job
from trainer.pipeline import run_job
from trainer.sweep import PointTask, SweepPoint, SweepResult, choose, point_spec, run_sweep
from trainer.toy import toy_job, write_toy_data


def base_job(tmp: Path, base_model: Path | str = "tiny", **over) -> dict:
    """The toy two_stage job (mixture and resources set), one task, tiny settings."""
    write_toy_data(tmp, tasks=("sentiment", "topic"), train=16, dev=6)
    settings = {"tasks": ["sentiment"], "base_model": str(base_model), "training": {"precision": "fp32"},
                    "baselines": {"steps": 2}, "eval": {"every_steps": 1, "dev_cap": 4}}
    for key, value in over.items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) and isinstance(settings.get(key), dict) else value
    return toy_job(tmp, **settings)


# -- grid points as job specs --------------------------------------------------------------


def test_a_full_point_is_the_jobs_baselines_at_one_lr(tmp_path):
    spec = parse_job({**base_job(tmp_path), "promote": True}, tmp_path)
    assert spec.method == "two_stage" and spec.mixture.stage1_steps == 4 and spec.resources.high == ["sentiment"]
    ps = point_spec(spec, "full", 3e-3)
    assert ps.name == "toy-full-lr3e-03" and ps.method == "single_task" and ps.finetune == "full"
    assert ps.training.lr == 3e-3 and ps.training.precision == "fp32"  # the job's precision unless given
    assert ps.mixture == MixtureSpec() and ps.resources.high is None  # dropped: single_task refuses them
    assert ps.baselines.train and ps.baselines.steps == 2 and ps.promote is False
    assert ps.lora is None and ps.output.checkpoints_dir == "checkpoints"
    assert ps.base_dir == spec.base_dir and ps.data_path == spec.data_path and ps.runs_path == spec.runs_path
    assert ps.tasks == ["sentiment"] and ps.eval == spec.eval and ps.seed == spec.seed
    # the job itself is untouched
    assert spec.training.lr == 1e-3 and spec.method == "two_stage" and spec.mixture.stage1_steps == 4
    assert point_spec(spec, "full", 1e-4, "bf16").training.precision == "bf16"


def test_a_lora_point_writes_its_adapters_beside_the_base(tmp_path):
    spec = parse_job(base_job(tmp_path, baselines={"train": False}), tmp_path)
    ps = point_spec(spec, "lora", 1e-3)
    assert ps.name == "toy-lora-lr1e-03" and ps.finetune == "lora" and ps.baselines.train
    assert ps.output.checkpoints_dir is None  # where loading finds an adapter's base
    assert ps.lora is None and ps.lora_settings == LoraSpec()
    # a LoRA job's own settings are kept
    lora_job = parse_job(base_job(tmp_path, finetune="lora", lora={"r": 4, "alpha": 8}), tmp_path)
    ps = point_spec(lora_job, "lora", 3e-4)
    assert ps.lora_settings.r == 4 and ps.lora_settings.alpha == 8 and ps.training.lr == 3e-4
    # and a full point of a LoRA job drops them
    assert point_spec(lora_job, "full", 3e-4).lora is None


def point(finetune: str, lr: float, *devs: float, precision: str = "fp32") -> SweepPoint:
    tasks = {
        f"t{i}": PointTask(task=f"t{i}", metric="accuracy", dev=d, dev_low=d - 0.1, dev_high=d + 0.1, zero_shot=0.5, trivial=0.5,
                           degenerate=d <= 0.5, selected="fine-tuned", run_id=f"st-t{i}-x", curve=[(0, 0.5), (2, d)], stopped_early=None)
        for i, d in enumerate(devs)
    }
    return SweepPoint(finetune, precision, lr, tasks, 0.1, 1.0)


def test_choose_the_highest_mean_per_mode_and_precision():
    points = [
        point("full", 1e-4, 0.6, 0.7),  # mean 0.65
        point("full", 3e-4, 0.9, 0.6),  # mean 0.75: chosen
        point("full", 1e-3, 0.8, 0.5),  # mean 0.65
        point("lora", 3e-4, 0.6, 0.6),
        point("lora", 1e-3, 0.7, 0.7),  # chosen
        point("full", 1e-3, 0.9, 0.9, precision="bf16"),  # its own group
    ]
    assert choose(points) == {"full/fp32": 3e-4, "lora/fp32": 1e-3, "full/bf16": 1e-3}
    assert points[1].mean == pytest.approx(0.75)


def test_choose_ties_go_to_the_smaller_lr():
    assert choose([point("full", 3e-4, 0.7), point("full", 1e-4, 0.7), point("full", 1e-3, 0.7)]) == {"full/fp32": 1e-4}
    assert choose([point("full", 1e-4, 0.7), point("full", 3e-4, 0.7)]) == {"full/fp32": 1e-4}
    assert choose([]) == {}


def test_markdown_marks_the_chosen_point_and_degenerate_cells():
    points = [point("full", 1e-4, 0.5), point("full", 3e-4, 0.75)]
    md = SweepResult("toy", points, choose(points)).to_markdown()
    lines = md.splitlines()
    assert lines[0] == "| fine-tuning | precision | lr | t0 | mean | s/step | chosen |"
    assert lines[2] == "| full | fp32 | 0.0001 | 50.0 (40.0-60.0) (degenerate) | 50.0 | 0.10 |  |"
    assert lines[3] == "| full | fp32 | 0.0003 | 75.0 (65.0-85.0) | 75.0 | 0.10 | yes |"
    assert lines[-1] == "Beside them (the same dev sets): t0: zero-shot 50.0, trivial 50.0 (accuracy)."


# -- a tiny sweep end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("sweep")
    spec = parse_job(base_job(tmp, tiny_llama_dir), tmp)
    events: list[dict] = []
    result = run_sweep(spec, {"full": [1e-3, 3e-3]}, emit=events.append)
    return spec, result, events


def test_run_sweep_returns_one_point_per_lr(swept):
    spec, result, events = swept
    assert [(p.finetune, p.precision, p.lr) for p in result.points] == [("full", "fp32", 1e-3), ("full", "fp32", 3e-3)]
    assert [e["lr"] for e in events if e["event"] == "sweep_point"] == [1e-3, 3e-3]
    assert set(result.chosen) == {"full/fp32"} and result.chosen["full/fp32"] in (1e-3, 3e-3)
    best = max(result.points, key=lambda p: (p.mean, -p.lr))
    assert result.chosen["full/fp32"] == best.lr
    a, b = (p.tasks["sentiment"] for p in result.points)
    assert a.run_id.startswith("st-sentiment-") and b.run_id.startswith("st-sentiment-") and a.run_id != b.run_id
    for pt in (a, b):
        assert pt.metric == "accuracy" and pt.dev_low <= pt.dev <= pt.dev_high
        assert [s for s, _ in pt.curve] == [0, 1, 2]  # zero-shot, then every step (eval.every_steps 1)
        assert pt.curve[0][1] == pytest.approx(pt.zero_shot)  # the same base model, the same dev sample
        assert pt.dev == pytest.approx(max(v for _, v in pt.curve))  # the best evaluation is kept
        assert pt.trivial is not None and pt.stopped_early is None
    assert a.zero_shot == b.zero_shot and a.trivial == b.trivial
    assert all(p.seconds_per_step is not None and p.seconds_per_step > 0 for p in result.points)
    # the run folders hold the points' key payloads
    keys = [json.loads((spec.runs_path / pt.run_id / "key.json").read_text()) for pt in (a, b)]
    assert [k["training"]["lr"] for k in keys] == [1e-3, 3e-3] and all(k["stages"][0]["steps"] == 2 for k in keys)


def test_sweep_result_serializes(swept):
    _, result, _ = swept
    data = json.loads(json.dumps(result.to_dict()))
    assert data["job"] == "toy" and data["chosen"] == result.chosen and len(data["points"]) == 2
    assert data["points"][0]["lr"] == 1e-3 and data["points"][0]["mean"] == pytest.approx(result.points[0].mean)
    md = result.to_markdown().splitlines()
    rows = [ln for ln in md if ln.startswith("| full |")]
    assert len(rows) == 2 and rows[0].startswith("| full | fp32 | 0.001 |") and rows[1].startswith("| full | fp32 | 0.003 |")
    assert sum(1 for r in rows if r.endswith("| yes |")) == 1


def test_a_second_sweep_is_cached_and_the_job_reuses_its_point(swept):
    spec, result, _ = swept
    events: list[dict] = []
    again = run_sweep(spec, {"full": [1e-3, 3e-3]}, emit=events.append)
    assert not [e for e in events if e["event"] in ("run_started", "step")]
    assert [p.tasks["sentiment"].run_id for p in again.points] == [p.tasks["sentiment"].run_id for p in result.points]
    assert again.chosen == result.chosen
    # the job at its own lr (1e-3) is the sweep's first point: its baseline is that run
    events = []
    job = run_job(spec, emit=events.append)
    assert job.runs == [result.points[0].tasks["sentiment"].run_id]
    assert not [e for e in events if e["event"] in ("run_started", "step")]


# -- the command line -------------------------------------------------------------------------


def write_job(folder: Path, base: Path, **over) -> Path:
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(base_job(folder, base, **over)), encoding="utf-8")
    return path


def test_cli_sweep_prints_json(swept, tiny_llama_dir):
    from typer.testing import CliRunner

    spec, result, _ = swept
    job = write_job(spec.base_dir, tiny_llama_dir)  # the same job: the points come from the run cache
    out = spec.base_dir / "sweep-out"
    res = CliRunner().invoke(app, ["train", "sweep", "-f", str(job), "--lr", "1e-3", "--lr", "3e-3", "--finetune", "full", "--json",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [(p["finetune"], p["lr"]) for p in data["points"]] == [("full", 1e-3), ("full", 3e-3)]
    assert data["chosen"] == result.chosen
    assert [p["tasks"]["sentiment"]["run_id"] for p in data["points"]] == [p.tasks["sentiment"].run_id for p in result.points]
    assert json.loads((out / "sweep.json").read_text())["chosen"] == result.chosen
    assert (out / "sweep.md").read_text().startswith("| fine-tuning | precision | lr | sentiment |")


def test_cli_sweep_refuses_bad_options_in_one_line(tmp_path, tiny_llama_dir, capsys):
    job = write_job(tmp_path, tiny_llama_dir)
    for args, message in ((["--finetune", "half"], "error: --finetune[0]: must be full or lora"),
                          (["--lr", "1e-3", "--lr", "0"], "error: --lr[1]: must be a positive number"),
                          (["--precision", "fp16"], "error: --precision[0]: must be auto, fp32 or bf16")):
        with pytest.raises(SystemExit) as info:
            main(["train", "sweep", "-f", str(job), *args])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and err.startswith(message) and err.count("\n") == 0, err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("st-*"))  # nothing trained


def test_points_of_a_long_named_job_keep_distinct_names(tmp_path):
    """Each point is a job of its own name (job-<name>.result.json and
    job-<name>.events.jsonl in the runs folder): two points must not share one.
    Today the name is cut at 64 characters, which for a job name of 52 or more
    characters cuts off the learning rate."""
    spec = parse_job(base_job(tmp_path, name="a" * 56), tmp_path)
    names = {lr: point_spec(spec, "full", lr).name for lr in (1e-4, 3e-4, 1e-3)}
    assert len(set(names.values())) == 3, names
