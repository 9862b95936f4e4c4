"""`mtserve status` against real services: health, the release that
answered, the registry's revision, the replica's loaded checkpoints; an
unreachable replica is reported and makes the exit code 1."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from mtserve_cli import main

from .conftest import make_settings, start_stack


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0  # type: ignore[assignment]
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def stack(tmp_path, hotel, tiny_llama_dir):
    stack = start_stack(make_settings(tmp_path), hotel, [tiny_llama_dir])
    yield stack
    stack.stop()


def test_status_shows_every_component_and_fails_on_an_unreachable_one(stack, capsys):
    version = importlib.metadata.version("mtserve")
    code, out, _ = run(capsys, "status", "--registry", stack.registry_address, "--inference", stack.inference_address, "--no-workers", "--json")
    assert code == 0
    registry, inference = json.loads(out)
    assert (registry["kind"], registry["health"], registry["version"]) == ("registry", "SERVING", version)
    assert registry["detail"]["revision"] == stack.registry.store.revision() and registry["detail"]["tasks"] == 18
    assert (inference["kind"], inference["health"], inference["version"]) == ("inference", "SERVING", version)
    assert inference["detail"]["loaded"] == ["tiny-llama"] and inference["detail"]["registry_connected"] is True
    assert inference["detail"]["registry_revision"] == registry["detail"]["revision"] and inference["detail"]["queue_depth"] == 0

    code, out, _ = run(capsys, "status", "--registry", stack.registry_address, "--inference", "127.0.0.1:1", "--no-workers", "--json")
    assert code == 1
    assert [c["health"] for c in json.loads(out)] == ["SERVING", "UNREACHABLE"]
    code, out, _ = run(capsys, "status", "--registry", stack.registry_address, "--inference", stack.inference_address, "--no-workers")
    assert code == 0 and "SERVING" in out and "tiny-llama" in out  # the table


def test_health_check_is_one_word_and_the_exit_code(stack, capsys):
    """`mtserve health check`: what the compose health checks run."""
    code, out, _ = run(capsys, "health", "check", stack.inference_address, "--service", "mtserve.v1.Inference")
    assert (code, out) == (0, "SERVING\n")
    code, out, _ = run(capsys, "health", "check", stack.registry_address)
    assert (code, out) == (0, "SERVING\n")
    code, out, _ = run(capsys, "health", "check", "127.0.0.1:1")
    assert (code, out) == (1, "UNREACHABLE\n")
    code, out, _ = run(capsys, "health", "check", stack.inference_address, "--service", "mtserve.v1.Nope")
    assert code == 1 and out == "NOT_FOUND\n"
