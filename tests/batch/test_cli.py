"""`mtserve logs ...` and the `mtserve batch` errors a user meets first:
each is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mtserve_cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code: Any = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return int(code or 0), out, err


def test_logs_synth_and_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "logs", "synth", "--date", "2024-05-01", "--n", "20", "--out", str(tmp_path / "d"),
                         "--seed", "3", "--mix-chinese", "--bad-records", "4", "--format", "jsonl", "--format", "parquet")
    assert code == 0 and "SYNTHETIC" in err
    logs = Path(out.strip())
    assert logs == tmp_path / "d" / "logs" and (tmp_path / "d" / "labels.jsonl").exists()
    assert sorted(p.suffix for p in logs.iterdir()) == [".jsonl", ".parquet"]
    code, out, _ = run(capsys, "logs", "check", str(logs), "--json", "--rejects", str(tmp_path / "rej.jsonl"))
    info = json.loads(out)
    assert code == 0 and info["valid"] == 20 and info["rejects"] == 4 and sum(info["by_reason"].values()) == 4
    assert len((tmp_path / "rej.jsonl").read_text().splitlines()) == 4
    code, out, _ = run(capsys, "logs", "synth", "--date", "2024-05-01", "--n", "20", "--out", str(tmp_path / "e"), "--seed", "3",
                       "--mix-chinese", "--bad-records", "4", "--format", "jsonl", "--format", "parquet", "--json")
    assert json.loads(out)["synthetic"] is True
    assert (tmp_path / "d" / "labels.jsonl").read_bytes() == (tmp_path / "e" / "labels.jsonl").read_bytes()  # same seed, same day


def test_synth_refuses_a_bad_date(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "logs", "synth", "--date", "yesterday", "--n", "2", "--out", str(tmp_path))
    assert code == 2 and err.startswith("error: date: must be a date") and "Traceback" not in err


def test_submit_refuses_unknown_tasks_before_touching_anything(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTSERVE_BATCH__SCORER", "local")
    code, _, err = run(capsys, "batch", "submit", "--logs", str(tmp_path), "--date", "2024-05-01", "--tasks", "rc-a,nope")
    assert code == 2 and "--tasks: unknown task" in err and "'nope'" in err
    assert err.count("\n") == 1


def test_submit_says_how_to_start_redis(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MTSERVE_BATCH__SCORER", "local")
    monkeypatch.setenv("MTSERVE_BATCH__BROKER_URL", f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    code, _, err = run(capsys, "batch", "submit", "--logs", str(tmp_path), "--date", "2024-05-01")
    assert code == 2 and f"cannot reach the Celery broker at redis://:**@127.0.0.1:{port}/0" in err
    assert "s3cret-pw" not in err  # never the password
    assert "redis-server" in err and "MTSERVE_BATCH__BROKER_URL" in err


def test_report_of_an_unknown_job(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTSERVE_BATCH__RESULTS_DATABASE_URL", f"sqlite:///{tmp_path / 'r.db'}")
    code, _, err = run(capsys, "batch", "report", "2024-05-01-deadbeef")
    assert code == 2 and "no batch job '2024-05-01-deadbeef'" in err
    code, _, err = run(capsys, "batch", "report", "--date", "2024-05-01")
    assert code == 2 and "no finished batch job for 2024-05-01" in err
    code, _, err = run(capsys, "batch", "report")
    assert code == 2 and "give a job id or --date" in err


def test_worker_dry_run_prints_the_celery_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTSERVE_BATCH__QUEUE", "nightly")
    code, out, _ = run(capsys, "worker", "--dry-run", "--concurrency", "3", "--", "--max-tasks-per-child", "100")
    assert code == 0
    assert "-m celery -A batch.celery_app worker --queues nightly --pool prefork --concurrency 3" in out
    assert out.strip().endswith("--max-tasks-per-child 100")
