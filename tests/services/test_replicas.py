"""Inference replicas behind gRPC client-side load balancing, as real
processes over loopback with TLS and tokens: the project's client given
both replicas as one `ipv4:` target keeps every call answered while one
replica is SIGKILLed mid-load, comes back, and the other is stopped with
SIGTERM and restarted (docs/services.md, "Replicas"). Also: a `dns:///`
target, and the health Watch that client-side health checking keeps open
on every replica holds no server thread."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from mtserve.config import load_settings
from mtserve.tasks import builtin_catalogue_path
from mtserve.tls import tls_dir
from mtserve_api.client import connect
from mtserve_api.inference import InferenceClient

from .conftest import make_settings, sample, start_stack, wait_for

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING


def cli(env: dict[str, str], *args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "mtserve_cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"mtserve {' '.join(args)}: {out.stderr}"


class Process:
    """`mtserve serve NAME` as a child process, its stderr in a log file; the
    address is read from its first stdout line, the metrics URL from its log."""

    def __init__(self, name: str, address: str, env: dict[str, str], log: Path, *, metrics: bool = True):
        self.name, self.log = name, log
        with log.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "mtserve_cli", "serve", name, "--address", address], env=env, cwd=ROOT,
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert "listening on" in line, f"`mtserve serve {name}` did not start: {line!r}\n{log.read_text()}"
        self.address = line.split("listening on ")[1].strip()
        self.port = int(self.address.rsplit(":", 1)[1])
        self.metrics_url = ""
        if metrics:
            found = wait_for(lambda: re.search(r"metrics on (https://\S+/metrics)", log.read_text()), f"{name}'s metrics line")
            self.metrics_url = found.group(1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=60)
        return self.proc.returncode


def serving(address: str, settings: Any) -> bool:
    try:
        with connect(address, settings=settings) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="mtserve.v1.Inference"), timeout=5).status
    except grpc.RpcError:
        return False
    return status == SERVING


def classified(replica: Process, home: Path, token: str) -> float:
    """Classify calls this replica answered OK (its Prometheus counter, over HTTPS with an operator token)."""
    context = ssl.create_default_context(cafile=str(tls_dir(home) / "ca.pem"))
    request = urllib.request.Request(replica.metrics_url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "mtserve_rpc_requests_total" and s.labels.get("method") == "Classify" and s.labels.get("code") == "OK")


class Load:
    """Steady calls through the clients until stopped: two clients with a
    thread each, and one shared by two threads (as the batch scorer shares
    its channel). Every failure is kept."""

    def __init__(self, clients: list[InferenceClient]):
        self.done, self.errors = 0, []  # type: ignore[var-annotated]
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,)) for c in (clients[0], clients[1], clients[2], clients[2])]
        for t in self._threads:
            t.start()

    def _run(self, client: InferenceClient) -> None:
        while not self._stop.is_set():
            try:
                assert client.classify("ec", sample("email")).prediction.label
            except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                with self._lock:
                    self.errors.append(exc)
            with self._lock:
                self.done += 1

    def more(self, n: int, what: str) -> None:
        target = self.done + n
        wait_for(lambda: self.done >= target or self.errors, what, timeout=120)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def test_two_replicas_one_killed_one_restarted_under_load_fail_no_call(tmp_path, tiny_llama_dir):
    env = {
        **os.environ,
        "MTSERVE_HOME": str(tmp_path),  # one home: one local CA, one token file for every process
        "MTSERVE_CHECKPOINTS_DIR": str(Path(tiny_llama_dir).parent),
        "MTSERVE_DEVICE": "cpu",
        "MTSERVE_REGISTRY__DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "MTSERVE_REGISTRY__METRICS_ADDRESS": "",
        "MTSERVE_INFERENCE__METRICS_ADDRESS": "127.0.0.1:0",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    registry = Process("registry", "127.0.0.1:0", env, logs / "registry.log", metrics=False)
    replicas: dict[str, Process] = {}
    starts = {"a": 0, "b": 0}

    def start(name: str, address: str = "127.0.0.1:0") -> Process:
        starts[name] += 1
        replica_env = {**env, "MTSERVE_INFERENCE__STATE_FILE": str(tmp_path / f"state-{name}.json")}
        replicas[name] = Process("inference", address, replica_env, logs / f"inference-{name}-{starts[name]}.log")
        return replicas[name]

    load = None
    try:
        env["MTSERVE_REGISTRY__ADDRESS"] = registry.address  # the CLI's and the replicas' registry
        cli(env, "tasks", "apply", "-f", str(builtin_catalogue_path("hotel")))
        cli(env, "checkpoints", "register", str(tiny_llama_dir))
        cli(env, "routes", "set", "ec", "tiny-llama")
        a, b = start("a"), start("b")
        settings = load_settings(env={"MTSERVE_HOME": str(tmp_path)})
        token = settings.client_token()  # the local admin token: metrics need operator or above
        assert token
        for r in (a, b):
            wait_for(lambda r=r: serving(r.address, settings), f"replica {r.address} to serve")

        # Both replicas on one host: the client verifies 127.0.0.1, which the local CA's server certificate covers.
        target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        clients = [InferenceClient(target, timeout=30, settings=settings) for _ in range(3)]
        load = Load(clients)
        wait_for(lambda: classified(a, tmp_path, token) >= 10 and classified(b, tmp_path, token) >= 10, "both replicas to take calls")

        # 1. A dies mid-load: its calls in flight fail UNAVAILABLE and are retried on B.
        a.kill()
        load.more(40, "calls with replica A dead")
        # 2. A comes back on its port; the clients reconnect (backoff at most 10 s) once its health says SERVING.
        a = start("a", f"127.0.0.1:{a.port}")
        wait_for(lambda: classified(a, tmp_path, token) >= 10, "the restarted replica A to take calls", timeout=120)
        # 3. B drains on SIGTERM (NOT_SERVING, then UNAVAILABLE for new calls), exits cleanly, and comes back.
        b_port = b.port
        assert b.terminate() == 0
        assert "stopped" in replicas["b"].log.read_text()
        load.more(40, "calls with replica B stopped")
        b = start("b", f"127.0.0.1:{b_port}")
        wait_for(lambda: classified(b, tmp_path, token) >= 10, "the restarted replica B to take calls", timeout=120)
        load.more(20, "calls with both replicas back")
        load.stop()
        assert load.errors == [], load.errors[:3]
        assert load.done >= 100
        for c in clients:
            c.close()
    finally:
        if load is not None:
            load.stop()
        for r in replicas.values():
            if r.proc.poll() is None:
                r.terminate()
        registry.terminate()


def test_a_dns_target(tmp_path, hotel, tiny_llama_dir):
    """`dns:///localhost:PORT`: every address localhost resolves to that
    listens (127.0.0.1 here); TLS verifies "localhost"."""
    stack = start_stack(make_settings(tmp_path), hotel, [tiny_llama_dir])
    try:
        port = stack.inference_address.rsplit(":", 1)[1]
        with InferenceClient(f"dns:///localhost:{port}", timeout=30, settings=stack.settings) as client:
            assert client.classify("ec", sample("email")).checkpoint_id == "tiny-llama"
    finally:
        stack.stop()


def test_health_watch_streams_hold_no_thread_and_no_call_slot(tmp_path, hotel, tiny_llama_dir):
    """Client-side health checking keeps a Watch open on every replica per
    client: 40 of them on a server of 8 threads still leave it answering,
    are not calls in flight (a stop does not wait for them), and an
    undecodable Watch is refused like any call."""
    settings = make_settings(tmp_path, **{"inference.max_workers": 8, "inference.max_inflight_calls": 4})
    stack = start_stack(settings, hotel, [tiny_llama_dir])
    channels, watches = [], []
    try:
        for _ in range(40):
            # Distinct channel arguments: separate connections, so 40 separate streams on the server.
            channel = connect(stack.inference_address, settings=settings)
            channels.append(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="mtserve.v1.Inference"), timeout=120)
            assert next(watch).status == SERVING
            watches.append(watch)
        assert stack.inference.interceptor.inflight == 0
        with InferenceClient(stack.inference_address, timeout=30, settings=settings) as client:
            assert client.classify("ec", sample("email")).prediction.label
        with connect(stack.inference_address, settings=settings) as raw:
            watch_raw = raw.unary_stream("/grpc.health.v1.Health/Watch")
            try:
                next(iter(watch_raw(b"\xff\xff\xff", timeout=10)))
                raise AssertionError("an undecodable Watch was answered")
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc
        assert stack.inference.interceptor.wait_idle(0)  # nothing for a graceful stop to wait for
    finally:
        for w in watches:
            w.cancel()
        for c in channels:
            c.close()
        stack.stop()
