"""The registry and serve commands: `mtserve tasks|routes|checkpoints ...`
against a live registry (in-process), and once everything as real
subprocesses started through `mtserve serve ...`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.config import load_settings
from mtserve.tasks import builtin_catalogue_path
from mtserve_api.client import connect
from mtserve_cli import main

from .conftest import SAMPLES, make_settings, sample, start_stack, wait_for

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def stack(tmp_path_factory, hotel):
    stack = start_stack(make_settings(tmp_path_factory.mktemp("cli")), hotel, [], inference=False)
    yield stack
    stack.stop()


def test_tasks_commands(stack, capsys, tmp_path):
    reg = ["--registry", stack.registry_address]
    code, out, err = run(capsys, "tasks", "apply", "-f", str(builtin_catalogue_path("hotel")), *reg, "--json")
    assert code == 0, err
    applied = json.loads(out)
    assert len(applied["tasks"]) == 18 and not any(t["changed"] for t in applied["tasks"])  # the stack applied it already

    code, out, _ = run(capsys, "tasks", "list", "--channel", "email", "--json", *reg)
    assert [t["name"] for t in json.loads(out)] == ["ec"]
    code, out, _ = run(capsys, "tasks", "show", "csqr", *reg)
    assert code == 0 and "name: csqr" in out and "version: 1" in out and "status: active" in out
    code, out, _ = run(capsys, "tasks", "retire", "hs", *reg)
    assert code == 0 and out.strip() == "hs\tv1\tretired"
    code, out, _ = run(capsys, "tasks", "list", "--status", "retired", "--json", *reg)
    assert [t["name"] for t in json.loads(out)] == ["hs"]

    # a changed catalogue gives the changed task a new version
    changed = builtin_catalogue_path("hotel").read_text().replace("Which team should handle this e-mail?", "Which team handles this e-mail?")
    path = tmp_path / "hotel.yaml"
    path.write_text(changed)
    code, out, err = run(capsys, "tasks", "apply", "-f", str(path), *reg)
    assert code == 0 and "ec\tv2\tchanged" in out and "hs\tv1\tchanged" in out  # hs: re-registered, active again
    code, out, _ = run(capsys, "tasks", "show", "ec", "--version", "1", "--json", *reg)
    assert json.loads(out)["instruction"].startswith("Which team should handle")

    # errors: one line, exit code 2
    code, out, err = run(capsys, "tasks", "show", "nope", *reg)
    assert (code, out) == (2, "") and err == f"error: registry at {stack.registry_address}: NOT_FOUND: unknown task 'nope'\n"
    code, _, err = run(capsys, "tasks", "list", "--channel", "fax", *reg)
    assert code == 2 and err == "error: --channel: must be one of call, im, email, review (got 'fax')\n"


def test_checkpoints_and_routes_commands(stack, capsys, tiny_llama_dir, tiny_qwen_dir):
    reg = ["--registry", stack.registry_address]
    for folder in (tiny_llama_dir, tiny_qwen_dir):
        code, out, err = run(capsys, "checkpoints", "register", str(folder), *reg, "--json")
        assert code == 0, err
        assert json.loads(out)["path"] == str(folder.resolve())
    code, out, _ = run(capsys, "checkpoints", "list", "--json", *reg)
    assert [c["id"] for c in json.loads(out)] == ["tiny-llama", "tiny-qwen"]
    code, out, _ = run(capsys, "checkpoints", "show", "tiny-qwen", *reg)
    assert json.loads(out)["manifest"]["id"] == "tiny-qwen"

    code, out, _ = run(capsys, "routes", "set", "see", "tiny-llama", *reg)
    assert code == 0 and out.strip() == "see\tv1\t-> tiny-llama"
    code, out, _ = run(capsys, "routes", "set", "see", "tiny-qwen", "--reason", "promoted by job 7", *reg)
    code, out, _ = run(capsys, "routes", "show", "--json", *reg)
    assert [(r["task"], r["checkpoint"], r["reason"]) for r in json.loads(out)["routes"]] == [("see", "tiny-qwen", "promoted by job 7")]
    code, out, _ = run(capsys, "routes", "rollback", "see", *reg)
    assert code == 0 and out.startswith("see\tv1\t-> tiny-llama")
    code, out, _ = run(capsys, "routes", "history", "see", "--json", *reg)
    assert [(h["checkpoint"], h["current"], bool(h["rolled_back_at"])) for h in json.loads(out)] == [
        ("tiny-qwen", False, True), ("tiny-llama", True, False)]
    code, out, err = run(capsys, "routes", "set", "see", "ghost", *reg)
    assert code == 2 and "NOT_FOUND: route.checkpoint_id: checkpoint 'ghost' is not registered" in err and err.count("\n") == 1

    # many tasks in one transaction: all of them, or none when one is unknown
    code, out, err = run(capsys, "routes", "promote", "tiny-qwen", "rc-a", "ghost-task", *reg)
    assert code == 2 and "routes[1].task: unknown task 'ghost-task'" in err
    code, out, _ = run(capsys, "routes", "show", "--json", *reg)
    assert [r["task"] for r in json.loads(out)["routes"]] == ["see"]
    code, out, err = run(capsys, "routes", "promote", "tiny-qwen", "--all", "--json", *reg)
    assert code == 0, err
    active = [t["name"] for t in json.loads(run(capsys, "tasks", "list", "--status", "active", "--json", *reg)[1])]
    assert sorted(r["task"] for r in json.loads(out)["routes"]) == sorted(active)
    code, out, _ = run(capsys, "routes", "show", "--json", *reg)
    assert {r["checkpoint"] for r in json.loads(out)["routes"]} == {"tiny-qwen"}
    code, _, err = run(capsys, "routes", "promote", "tiny-qwen", *reg)
    assert code == 2 and err == "error: tasks: name the tasks to promote, or give --all (not both) (got None)\n"


def test_an_unreachable_registry_is_one_clear_line(capsys):
    code, _out, err = run(capsys, "routes", "show", "--registry", "127.0.0.1:1")
    assert code == 2 and err.startswith("error: registry at 127.0.0.1:1: UNAVAILABLE: ") and err.count("\n") == 1


# -- real processes ----------------------------------------------------------------------------
class Server:
    """`mtserve serve ...` as a child process; the port is read from its first line."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtserve_cli", "serve", *args],
            env={**env, "MTSERVE_REGISTRY__METRICS_ADDRESS": "127.0.0.1:0", "MTSERVE_INFERENCE__METRICS_ADDRESS": "127.0.0.1:0"}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if "listening on" not in line:
            self.proc.kill()
            raise AssertionError(f"`mtserve serve {' '.join(args)}` did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.address = line.split("listening on ")[1].strip()

    def terminate(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mtserve_cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"mtserve {' '.join(args)}: {out.stderr}"
    return out.stdout


def serving(address: str, home: Path) -> bool:
    """Health over TLS with the local CA of the services' home."""
    try:
        with connect(address, settings=load_settings(env={"MTSERVE_HOME": str(home)})) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="mtserve.v1.Inference"), timeout=5).status
    except grpc.RpcError:
        return False
    return status == health_pb2.HealthCheckResponse.SERVING


def test_everything_as_real_processes(tmp_path, tiny_llama_dir):
    env = {
        **os.environ,
        "MTSERVE_HOME": str(tmp_path),
        "MTSERVE_CHECKPOINTS_DIR": str(Path(tiny_llama_dir).parent),  # the checkpoint root registrations must lie in
        "MTSERVE_DEVICE": "cpu",
        "MTSERVE_REGISTRY__DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "MTSERVE_INFERENCE__STATE_FILE": str(tmp_path / "state.json"),
    }
    registry = Server(["registry", "--address", "127.0.0.1:0"], env)
    inference = None
    try:
        env["MTSERVE_REGISTRY__ADDRESS"] = registry.address  # the default --registry of every command below
        cli(env, "tasks", "apply", "-f", str(builtin_catalogue_path("hotel")))
        cli(env, "checkpoints", "register", str(tiny_llama_dir))
        for task in ("rc-a", "csqr", "cs"):
            cli(env, "routes", "set", task, "tiny-llama")
        inference = Server(["inference", "--address", "127.0.0.1:0"], env)
        wait_for(lambda: serving(inference.address, tmp_path), "the inference process to serve")
        out = cli(env, "classify", "--server", inference.address, "--input", str(SAMPLES / "call-cancelled.json"), "--json", "--timeout", "60")
        rows = json.loads(out)
        assert [r["task"] for r in rows] == ["csqr", "rc-a"]  # the call tasks that have a route
        for r in rows:
            assert r["checkpoint"] == "tiny-llama" and r["label"] in r["scores"]
            assert sum(r["scores"].values()) == pytest.approx(1.0)
        out = cli(env, "classify", "--server", inference.address, "--task", "cs", "--input", str(SAMPLES / "call-cancelled.json"), "--json")
        assert isinstance(json.loads(out)[0]["text"], str)
    finally:
        codes = []
        if inference is not None:
            codes.append(inference.terminate())
        codes.append(registry.terminate())
    for code, err in codes:
        assert code == 0 and "stopped" in err, err


def test_serve_on_a_busy_port_is_one_line_before_any_grpc_log(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        env = {**os.environ, "MTSERVE_HOME": str(tmp_path), "MTSERVE_REGISTRY__DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}"}
        out = subprocess.run([sys.executable, "-m", "mtserve_cli", "serve", "registry", "--address", address],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == f"error: cannot listen on {address}: Address already in use"
    assert "add_port" not in out.stderr and "Traceback" not in out.stderr, out.stderr  # no gRPC C-core line


def test_json_logs_carry_the_request_id_and_never_the_customer_text(tmp_path, tiny_llama_dir):
    """Both services as real processes at DEBUG with JSON logs: every line is
    a JSON object, the lines of a call carry its request id (the caller's,
    which also comes back in the response metadata), and the conversation's
    text appears in no line, not even for a refused call that quotes it."""
    from mtserve_api import convert
    from mtserve_api.v1 import inference_pb2 as ipb
    from mtserve_api.v1 import inference_pb2_grpc as ipb_grpc

    marker = "Zebrafinch-4417 cancelled my booking"
    env = {
        **os.environ,
        "MTSERVE_HOME": str(tmp_path),
        "MTSERVE_CHECKPOINTS_DIR": str(Path(tiny_llama_dir).parent),
        "MTSERVE_DEVICE": "cpu",
        "MTSERVE_REGISTRY__DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "MTSERVE_INFERENCE__STATE_FILE": str(tmp_path / "state.json"),
        "MTSERVE_LOG_FORMAT": "json",
        "MTSERVE_LOG_LEVEL": "DEBUG",
        "MTSERVE_REGISTRY__METRICS_ADDRESS": "",
        "MTSERVE_INFERENCE__METRICS_ADDRESS": "",
    }
    logs = {name: tmp_path / f"{name}.log" for name in ("registry", "inference")}
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str) -> str:
        procs[name] = subprocess.Popen([sys.executable, "-m", "mtserve_cli", "serve", name, "--address", "127.0.0.1:0"], env=env, cwd=ROOT,
                                       stdout=subprocess.PIPE, stderr=logs[name].open("w"), text=True)
        line = procs[name].stdout.readline()  # type: ignore[union-attr]
        assert "listening on" in line, logs[name].read_text()
        return line.split("listening on ")[1].strip()

    try:
        env["MTSERVE_REGISTRY__ADDRESS"] = start("registry")
        cli(env, "tasks", "apply", "-f", str(builtin_catalogue_path("hotel")))
        cli(env, "checkpoints", "register", str(tiny_llama_dir))
        cli(env, "routes", "set", "rc-a", "tiny-llama")
        address = start("inference")
        wait_for(lambda: serving(address, tmp_path), "the inference process to serve")
        call = convert.input_to_pb(sample("call-cancelled"))
        call.conversation.turns[0].text = marker
        with connect(address, settings=load_settings(env={"MTSERVE_HOME": str(tmp_path)})) as channel:
            stub = ipb_grpc.InferenceStub(channel)
            _, answered = stub.Classify.with_call(ipb.ClassifyRequest(task="rc-a", input=call), metadata=[("x-request-id", "req-ok-1")], timeout=60)
            assert ("x-request-id", "req-ok-1") in answered.trailing_metadata()
            # Refused: the conversation is over its budget and truncation is off (the message names the input, not its text).
            long = convert.input_to_pb(sample("call-cancelled"))
            long.conversation.turns[0].text = (marker + " ") * 400
            with pytest.raises(grpc.RpcError) as refused:
                stub.Classify(ipb.ClassifyRequest(task="rc-a", input=long, no_truncate=True), metadata=[("x-request-id", "req-bad-2")], timeout=60)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            # A blank turn beside the marked one: a ValidationError that quotes the caller's value.
            empty = convert.input_to_pb(sample("call-cancelled"))
            empty.conversation.turns[0].text = marker
            empty.conversation.turns[1].text = "   "
            with pytest.raises(grpc.RpcError):
                stub.Classify(ipb.ClassifyRequest(task="rc-a", input=empty), metadata=[("x-request-id", "req-bad-3")], timeout=60)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    lines = [line for name in logs for line in logs[name].read_text().splitlines()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert records and {"ts", "level", "logger", "message", "request_id"} <= set(records[0])
    assert any(r["request_id"] == "req-bad-2" and "INVALID_ARGUMENT" in r["message"] for r in records)
    assert not [line for line in lines if "Zebrafinch" in line]


def test_promote_unrouted_never_moves_a_route_someone_set(tmp_path, hotel, tiny_llama_dir, tiny_qwen_dir, capsys):
    """What the compose bootstrap runs on every start: only the tasks without a route get one."""
    stack = start_stack(make_settings(tmp_path), hotel, [], inference=False)
    try:
        reg = ["--registry", stack.registry_address]
        for folder in (tiny_llama_dir, tiny_qwen_dir):
            assert run(capsys, "checkpoints", "register", str(folder), *reg)[0] == 0
        code, out, err = run(capsys, "routes", "promote", "tiny-qwen", "see", "ec", *reg)  # someone's choice for two tasks
        assert code == 0, err
        code, out, err = run(capsys, "routes", "promote", "tiny-llama", "--all", "--unrouted", "--json", *reg)
        assert code == 0, err
        moved = {r["task"] for r in json.loads(out)["routes"]}
        assert "see" not in moved and "ec" not in moved and len(moved) >= 10
        code, out, _ = run(capsys, "routes", "show", "--json", *reg)
        table = {r["task"]: r["checkpoint"] for r in json.loads(out)["routes"]}
        assert table["see"] == table["ec"] == "tiny-qwen" and {table[t] for t in moved} == {"tiny-llama"}
        code, out, _ = run(capsys, "routes", "promote", "tiny-llama", "--all", "--unrouted", "--json", *reg)
        assert code == 0 and json.loads(out)["routes"] == []  # a second run: nothing left to route
    finally:
        stack.stop()
