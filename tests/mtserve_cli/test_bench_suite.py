"""`mtserve bench <measure> --smoke`: every measure of the suite runs on a
tiny random model and writes its record. Nothing here looks at a timing:
the smoke mode proves the code runs, not that anything is fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtserve_cli import main
from mtserve_cli.benchmarks.harness import alternate
from mtserve_cli.benchmarks.suite import MEASURES

RECORD_KEYS = {"measure", "question", "date", "command", "machine", "software", "config", "arms", "ratios", "details", "notes"}


def run_cli(args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), f"mtserve {' '.join(args)} exited with {exc.code}"


def check_record(path: Path, measure: str) -> dict:
    record = json.loads(path.read_text(encoding="utf-8"))
    assert RECORD_KEYS <= set(record) and record["measure"] == measure
    assert record["software"]["torch"] and record["software"]["threads"]["intra_op"] >= 1
    assert record["machine"]["cores"] >= 1 and "load_average" in record["machine"]
    assert len(record["arms"]) >= 2 and all(arm["values"] for arm in record["arms"].values())
    for r in record["ratios"]:
        assert r["direction"] in ("lower is better", "higher is better") and r["value"] > 0
    assert record["config"]["smoke"] is True
    return record


@pytest.mark.parametrize("measure", MEASURES)
def test_every_measure_completes_and_writes_its_record(measure: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    # memory: 4 conversations bring an e-mail and a review, so every kind of input is scored.
    size = ["--n", "4"] if measure == "memory" else []
    run_cli(["bench", measure, "--smoke", "--model", str(tiny_llama_dir), "--out", str(tmp_path), *size])
    record = check_record(tmp_path / f"{measure}.json", measure)
    if measure == "latency":  # the secured default (TLS + token), with the plaintext figure beside it
        assert {"Classify over gRPC (TLS + token)", "Classify over gRPC (plaintext)"} <= set(record["arms"])
    if measure == "cost":  # both prompt styles, each against its own one-task arm
        assert len(record["ratios"]) == 2 and {r["goal"] for r in record["ratios"]} == {2.5, 1.5}
        tokens = record["details"]
        assert tokens["compact"]["question_tokens_per_conversation_median"] < tokens["natural"]["question_tokens_per_conversation_median"]
        assert tokens["compact"]["prefix_tokens_max"] == tokens["natural"]["prefix_tokens_max"]
    if measure == "generate":  # both prompt styles, each generate() loop asking what its mtserve arm asks
        assert len(record["arms"]) == 4 and [r["goal"] for r in record["ratios"]] == [10.0, 10.0]
        assert 0 < record["config"]["prompt_tokens"]["compact"] < record["config"]["prompt_tokens"]["natural"]


def test_smoke_builds_its_own_tiny_model_and_all_runs_a_selection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(["bench", "all", "--smoke", "--only", "cost", "--only", "sharing", "--out", str(tmp_path)])
    for measure in ("cost", "sharing"):
        assert check_record(tmp_path / f"{measure}.json", measure)["config"]["model"] == "tiny-bench"
    out = capsys.readouterr().out
    assert "lower is better" in out and "higher is better" in out  # both arms and the ratio's direction are printed


def test_arms_alternate_so_drift_hits_both() -> None:
    calls: list[str] = []
    alternate([("a", lambda: calls.append("a") or 1.0), ("b", lambda: calls.append("b") or 1.0)], 4)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
