"""Settings: defaults < file < environment < flags; unknown keys fail, naming the key."""

from __future__ import annotations

import pytest

from mtserve.config import load_settings
from mtserve.errors import ValidationError


def test_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inference:\n  max_wait_ms: 7\n  queue_size: 9\ndevice: cpu\n")
    env = {"MTSERVE_INFERENCE__QUEUE_SIZE": "11", "MTSERVE_HOME": str(tmp_path)}
    s = load_settings(f, overrides={"inference.max_wait_ms": 3.5, "device": None}, env=env)
    assert s.inference.max_wait_ms == 3.5  # flag beats file
    assert s.inference.queue_size == 11  # env beats file
    assert s.device == "cpu"  # file beats default; a None flag is "not given"
    assert s.home == tmp_path and s.checkpoints_root == tmp_path / "checkpoints"
    assert s.registry_database_url == f"sqlite:///{tmp_path / 'registry.db'}"


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inference:\n  max_wiat_ms: 7\n")
    with pytest.raises(ValidationError, match=r"inference.max_wiat_ms: unknown setting \(from .*c.yaml\)"):
        load_settings(f, env={})


def test_unknown_key_in_environment():
    with pytest.raises(ValidationError, match=r"registy: unknown setting \(from environment variable MTSERVE_REGISTY__ADDRESS\)"):
        load_settings(env={"MTSERVE_REGISTY__ADDRESS": "x"})


def test_wrong_type_names_key_and_value():
    with pytest.raises(ValidationError, match=r"inference.queue_size: .*\(got 'many'\)"):
        load_settings(env={"MTSERVE_INFERENCE__QUEUE_SIZE": "many"})
    with pytest.raises(ValidationError, match=r"inference.queue_size: .*greater than or equal to 1"):
        load_settings(overrides={"inference.queue_size": 0}, env={})


def test_config_file_errors(tmp_path):
    with pytest.raises(ValidationError, match="cannot read file"):
        load_settings(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValidationError, match="must be a mapping"):
        load_settings(bad, env={})
