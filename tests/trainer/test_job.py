"""The job spec: Table 6 defaults, and one test per validation rule, each
checking that the message names the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import trainer.job as job_module
from mtserve.errors import ValidationError
from trainer.job import METHODS, default_lr, load_job, parse_job

MINIMAL = {"name": "toy", "data_dir": "data"}


def job(**over):
    out = dict(MINIMAL)
    for key, value in over.items():
        out[key] = value
    return out


def refused(data, field: str, *fragments: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_job(data)
    err = info.value
    assert err.field == field, str(err)
    for fragment in fragments:
        assert fragment in str(err), str(err)
    return err


def test_defaults_are_table_6():
    spec = parse_job(MINIMAL)
    t, m = spec.training, spec.mixture
    assert (t.lr, t.micro_batch, t.grad_accum) == (None, 1, 8)  # lr by model scale: Table 6's 3e-5 for 1B+ models
    assert default_lr("full", 7_000_000_000) == 3e-5 and default_lr("full", 135_000_000) == job_module.SMALL_FULL_LR
    assert default_lr("lora", 7_000_000_000) == 2e-4 and default_lr("lora", 135_000_000) == job_module.SMALL_LORA_LR
    assert (m.stage1_epochs, m.stage2_epochs, m.cap_k, m.tau) == (1.0, 10.0, 8000, 3.33)
    assert spec.max_steps == 15000  # appendix A
    assert spec.method == "two_stage" and spec.finetune == "full" and spec.on_bad_lines == "fail"
    assert spec.task_filter.group_by == "kind" and spec.resources.saturation_epochs == 5
    assert spec.examples_per_step == 8
    assert spec.lora_settings is None


def test_every_method_parses():
    for method in METHODS:
        extra = {"resources": {"high": []}} if method == "two_stage" else {}
        assert parse_job(job(method=method, **extra)).method == method


def test_resolved_spec_round_trips_and_digest_is_stable():
    spec = parse_job(job(training={"lr": 1e-4}))
    again = parse_job(spec.to_dict())
    assert again.to_dict() == spec.to_dict() and again.digest() == spec.digest()
    assert parse_job(job(training={"lr": 2e-4})).digest() != spec.digest()


def test_unknown_top_level_key_is_refused():
    err = refused(job(learning_rate=1e-4), "learning_rate", "unknown key", "max_steps")
    assert "allowed keys" in str(err)


def test_unknown_nested_key_is_refused_with_the_allowed_keys():
    refused(job(training={"lrate": 1}), "training.lrate", "unknown key", "'lr'")
    refused(job(stage0={"corpus": "c.txt", "bogus": 1}), "stage0.bogus", "unknown key", "corpus")


def test_missing_required_key():
    refused({"name": "toy"}, "data_dir", "is required")


def test_wrong_type_names_field_and_value():
    refused(job(training={"lr": "fast"}), "training.lr", "number", "'fast'")
    refused(job(seed="x"), "seed", "'x'")


def test_booleans_are_not_numbers():
    refused(job(training={"lr": True}), "training.lr", "true/false")
    refused(job(max_steps=True), "max_steps", "true/false")


def test_yaml_exponent_without_dot_is_a_number():
    # YAML 1.1 reads `3e-5` as a string; the spec accepts it as the number it means
    data = yaml.safe_load("name: toy\ndata_dir: d\ntraining: {lr: 3e-5}\n")
    assert data["training"]["lr"] == "3e-5"
    assert parse_job(data).training.lr == pytest.approx(3e-5)


def test_ranges():
    refused(job(training={"micro_batch": 0}), "training.micro_batch", "greater than or equal to 1", "0")
    refused(job(training={"lr": 0}), "training.lr", "greater than 0")
    refused(job(training={"warmup_ratio": 1.0}), "training.warmup_ratio", "less than 1")
    refused(job(max_seq_len=8), "max_seq_len", "32")
    refused(job(mixture={"tau": -1}, method="temperature"), "mixture.tau", "greater than 0")
    refused(job(training={"lr": float("inf")}), "training.lr", "finite")


def test_examples_per_step_is_bounded():
    refused(job(training={"micro_batch": 64, "grad_accum": 128}), "training.micro_batch", "4096", "8192")


def test_unknown_method_lists_the_methods():
    refused(job(method="round_robin"), "method", "two_stage", "'round_robin'")


def test_name_must_be_a_slug():
    refused(job(name="My Job"), "name", "must match", "'My Job'")


def test_tasks_rules():
    refused(job(tasks=[]), "tasks", "at least one task")
    refused(job(tasks=["a", "b", "a"]), "tasks[2]", "twice", "'a'")


def test_device_rule():
    refused(job(device="tpu"), "device", "auto, cpu, cuda", "'tpu'")
    assert parse_job(job(device="cuda:1")).device == "cuda:1"


def test_enumerations():
    refused(job(on_bad_lines="skip"), "on_bad_lines", "'fail' or 'report'", "'skip'")
    refused(job(finetune="qlora"), "finetune", "'full' or 'lora'")
    refused(job(task_filter={"group_by": "size"}), "task_filter.group_by", "'kind'")
    refused(job(training={"multilabel": "all"}), "training.multilabel", "sample_one")


def test_setting_the_method_does_not_read_is_refused():
    refused(job(method="instance_balanced", mixture={"tau": 2}), "mixture.tau", "not used by method 'instance_balanced'")
    refused(job(method="temperature", mixture={"cap_k": 100}), "mixture.cap_k", "not used by method 'temperature'")
    refused(job(method="unimax", mixture={"stage1_epochs": 2}), "mixture.stage1_epochs", "not used by method 'unimax'")
    assert parse_job(job(method="unimax", mixture={"stage1_epochs": 1})).method == "unimax"  # a default value is no setting
    # the settings a method does read are fine
    assert parse_job(job(method="temperature_capped", mixture={"tau": 2, "cap_k": 20000})).mixture.cap_k == 20000
    assert parse_job(job(method="unimax", mixture={"unimax_max_epochs": 3})).mixture.unimax_max_epochs == 3


def test_compact_suffixes_are_a_multi_task_setting():
    """A baseline is the natural-language reference a compact mixture is measured against."""
    refused(job(method="single_task", mixture={"suffixes": "compact"}), "mixture.suffixes", "not used by method 'single_task'")
    refused(job(method="two_stage", mixture={"suffixes": "short"}), "mixture.suffixes", "'natural' or 'compact'", "'short'")
    assert parse_job(job(method="two_stage", mixture={"suffixes": "compact"})).mixture.suffixes == "compact"
    assert parse_job(job(method="unimax")).mixture.suffixes == "natural"


def test_resources_rules():
    refused(job(method="class_balanced", resources={"high": ["a"]}), "resources.high", "only two_stage")
    refused(job(tasks=["a", "b"], resources={"high": ["c"]}), "resources.high[0]", "not one of the job's tasks", "'c'")
    refused(job(method="single_task", resources={"saturation_epochs": 3}), "resources.saturation_epochs", "not used")


def test_two_stage_needs_high_resource_tasks_or_baselines():
    refused(job(baselines={"train": False}), "resources.high", "high-resource tasks")
    assert parse_job(job(baselines={"train": False}, resources={"high": []})).resources.high == []


def test_epochs_and_steps_are_exclusive():
    refused(job(baselines={"epochs": 3, "steps": 10}), "baselines.steps", "not both", "10")
    refused(job(mixture={"stage2_epochs": 3, "stage2_steps": 10}), "mixture.stage2_steps", "not both")
    for method in METHODS:  # a resolved spec (every key written out) parses again
        extra = {"resources": {"high": ["a"]}} if method == "two_stage" else {}
        spec = parse_job(job(method=method, tasks=["a"], finetune="lora", stage0={"corpus": "c.txt", "steps": 3}, **extra))
        assert parse_job(spec.to_dict()).to_dict() == spec.to_dict()
    refused(job(stage0={"corpus": "c.txt", "epochs": 2, "steps": 5}), "stage0.steps", "not both")
    assert parse_job(job(mixture={"stage2_steps": 10})).mixture.stage2_steps == 10


def test_lora_rules():
    refused(job(lora={"r": 8}), "lora", "finetune is full")
    refused(job(finetune="lora", lora={"target_modules": []}), "lora.target_modules", "at least one module")
    refused(job(finetune="lora", lora={"target_modules": 5}), "lora.target_modules", "5")
    spec = parse_job(job(finetune="lora"))
    assert spec.lora_settings is not None and spec.lora_settings.r == 16 and "q_proj" in spec.lora_settings.target_modules
    assert parse_job(job(finetune="lora", lora={"target_modules": "all-linear"})).lora_settings.target_modules == "all-linear"


def test_stage0_needs_a_corpus():
    refused(job(stage0={"epochs": 1}), "stage0.corpus", "is required")
    refused(job(stage0={"corpus": " "}), "stage0.corpus", "corpus file")


def test_not_a_mapping():
    with pytest.raises(ValidationError, match="must be a mapping"):
        parse_job(["name", "toy"])


def test_load_job_resolves_paths_against_the_file(tmp_path: Path):
    folder = tmp_path / "jobs"
    folder.mkdir()
    path = folder / "job.yaml"
    path.write_text("name: toy\ndata_dir: ../data\noutput: {runs_dir: runs}\n", encoding="utf-8")
    spec = load_job(path)
    assert spec.data_path.resolve() == (tmp_path / "data").resolve()
    assert spec.runs_path.resolve() == (folder / "runs").resolve()
    absolute = tmp_path / "elsewhere"
    assert parse_job(job(data_dir=str(absolute))).data_path == absolute


def test_load_job_file_errors(tmp_path: Path):
    with pytest.raises(ValidationError, match="cannot read file"):
        load_job(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="not valid YAML"):
        load_job(bad)


def test_confine_keeps_a_job_and_its_outputs_inside_the_root(tmp_path):
    """The trainer service's rule (trainer.job.confine), on the spec alone:
    resolved paths, so `..` and symbolic links cannot lead out."""
    from trainer.job import confine
    from trainer.toy import toy_job

    root, checkpoints = tmp_path / "root", tmp_path / "checkpoints"
    (root / "job").mkdir(parents=True)
    (checkpoints / "base").mkdir(parents=True)
    (root / "job" / "link-out").symlink_to(tmp_path)

    def spec(**over):
        return parse_job({**toy_job(root / "job", base_model=str(checkpoints / "base")), **over}, base_dir=root / "job")

    confine(spec(), root, checkpoints)  # everything inside: accepted
    confine(spec(base_model="base"), root, checkpoints)  # a checkpoint id
    cases = [
        (spec(output={"runs_dir": "../../elsewhere"}), "output.runs_dir"),
        (spec(output={"runs_dir": "link-out/runs"}), "output.runs_dir"),
        (spec(output={"runs_dir": "runs", "checkpoints_dir": str(tmp_path / "out")}), "output.checkpoints_dir"),
        (spec(base_model=str(tmp_path)), "base_model"),
        (parse_job(toy_job(tmp_path / "else", base_model="base"), base_dir=tmp_path / "else"), "base_dir"),
    ]
    for bad, field in cases:
        with pytest.raises(ValidationError) as info:
            confine(bad, root, checkpoints)
        assert info.value.field == field
