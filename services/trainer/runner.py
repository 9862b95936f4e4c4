"""One attempt of a training job on a train worker: plain Python (no Celery,
no gRPC, no torch here), called by the Celery task (services/trainer/tasks.py)
and by tests directly.

    claim the job in the database (the lease) -> check who asked and what the
    spec touches, with this worker's own settings -> run
        python -m trainer run -f <jobs_dir>/<id>/spec.yaml --base-dir DIR --exit-with-parent PID
               [--root R --checkpoints-root C] [--resume|--restart] [--promote|--register --registry ADDR]
    in its own process group -> its stdout (JSON-line events, the last one the
    result) into the job's log in the database every poll, renewing the lease
    -> its end decides the job's state.

Why a process and not training inside the Celery pool process: the training
process is the same runner `torchrun`/`accelerate launch` start, it frees
its GPU memory by exiting, and a cancel is a signal to it, whatever it is
doing (a step of a 7B model is not interruptible from Python). Its stderr
goes to <jobs_dir>/<id>/stderr.log on the worker's machine; the job's error
quotes the end of it.

`--exit-with-parent` asks Linux to SIGTERM the training process when this
pool process dies, so a SIGKILLed worker leaves nothing training unobserved
(and no second writer of the runs folder when the job resumes elsewhere).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mtserve.auth import Role
from mtserve.errors import MtserveError, ValidationError
from mtserve_api.roles import ROLE_OF, allows
from services.trainer.records import JobState, Options, check_job_id, load_spec
from services.trainer.store import Claim, JobStore, LeaseLost

log = logging.getLogger(__name__)

STDERR_FILE = "stderr.log"
SPEC_FILE = "spec.yaml"
# The RPC that queues an attempt; the task asks the same question of the role recorded with the job.
START_METHOD = "/mtserve.v1.Trainer/StartJob"
RESUME_METHOD = "/mtserve.v1.Trainer/ResumeJob"


class Busy(Exception):
    """Another worker holds a live lease on the job: this delivery is a
    duplicate (a redelivered message); look again in `wait` seconds."""

    def __init__(self, job_id: str, owner: str, wait: float):
        super().__init__(f"job {job_id} runs on {owner}; looking again in {wait:.0f}s")
        self.job_id, self.owner, self.wait = job_id, owner, wait


@dataclass
class WorkerConfig:
    """What one train worker process uses, from its own settings."""

    name: str  # the lease owner: <celery node>/<pid>
    jobs_dir: Path  # work folders (spec, stderr) on this machine
    root: Path | None  # trainer.root: what jobs may touch; None: anything (tests of the runner alone)
    checkpoints_root: Path
    lease_seconds: float
    poll_seconds: float
    cancel_grace: float
    python: str = sys.executable
    env: Mapping[str, str] = field(default_factory=dict)  # on top of os.environ, for the training process

    @classmethod
    def from_settings(cls, settings: Any, name: str) -> WorkerConfig:
        t = settings.trainer
        return cls(name=name, jobs_dir=settings.trainer_jobs_dir, root=settings.trainer_root, checkpoints_root=settings.checkpoints_root,
                   lease_seconds=t.lease_seconds, poll_seconds=t.poll_seconds, cancel_grace=t.cancel_grace_seconds)

    @property
    def heartbeat_seconds(self) -> float:
        return max(self.poll_seconds, self.lease_seconds / 3)


def run_job(store: JobStore, job_id: str, cfg: WorkerConfig) -> str:
    """Run the job's next attempt here if it is to run; returns its final
    state (or the state found: a finished or cancelled job runs nothing).
    Raises Busy for a job another live worker runs."""
    try:
        check_job_id(job_id)
    except MtserveError as exc:
        log.error("train task for %r ignored: %s", job_id, exc)
        return "unknown"
    folder = cfg.jobs_dir / job_id
    try:
        claim = store.claim(job_id, cfg.name, lease_seconds=cfg.lease_seconds, folder=str(folder))
    except MtserveError as exc:  # NotFoundError: a message for a job the database does not have
        log.error("train task for %s ignored: %s", job_id, exc)
        return "unknown"
    if claim.kind == "busy":
        raise Busy(job_id, claim.owner, claim.wait)
    if claim.kind == "done":
        log.info("job %s is %s: nothing to run", job_id, claim.state.value)
        return claim.state.value
    refusal = _refusal(claim, cfg)
    if refusal:
        log.error("job %s refused on %s: %s", job_id, cfg.name, refusal)
        store.finish(job_id, cfg.name, JobState.FAILED, error=refusal)
        return JobState.FAILED.value
    assert claim.options is not None  # a run claim carries them
    return _Attempt(store, claim, cfg, folder).run()


def _refusal(claim: Claim, cfg: WorkerConfig) -> str:
    """Why this worker will not run the job, or "". The service checked the
    same at the RPC; the worker asks again because the queue and the
    database, not the RPC, are what reach it: a job must not train or
    promote for a caller whose role could not have asked for it, nor touch
    paths outside this worker's trainer root."""
    method = RESUME_METHOD if claim.action == "resume" and claim.attempt > 1 else START_METHOD
    try:
        role = Role.parse(claim.requested_role)
    except ValidationError:
        return f"the job was requested by {claim.requested_by!r} with an unknown role {claim.requested_role!r}; nothing was run"
    if not allows(method, role):
        need = ROLE_OF[method].label
        return (f"{method.rsplit('/', 1)[1]} needs the {need} role; the job was requested by {claim.requested_by!r} with role "
                f"{role.label}; nothing was run")
    assert claim.options is not None
    try:
        load_spec(claim.spec_yaml, claim.options.base_dir or "", root=cfg.root, checkpoints_root=cfg.checkpoints_root)
    except MtserveError as exc:
        return f"the worker refused the job: {exc}"
    return ""


class _Attempt:
    def __init__(self, store: JobStore, claim: Claim, cfg: WorkerConfig, folder: Path):
        self.store, self.claim, self.cfg, self.folder = store, claim, cfg, folder
        self.job_id = claim.job_id
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.pending: list[dict[str, Any] | None] = []  # events read, not yet in the database
        self.events: list[dict[str, Any] | None] = []  # every event of this attempt (the end is judged from them)
        self.cancelled = False
        self.lost = False

    def command(self) -> list[str]:
        opts: Options = self.claim.options  # type: ignore[assignment]
        cmd = [self.cfg.python, "-m", "trainer", "run", "-f", str(self.folder / SPEC_FILE), "--base-dir", opts.base_dir,
               "--exit-with-parent", str(os.getpid())]
        if self.cfg.root is not None:  # the job process checks the spec's paths again itself
            cmd += ["--root", str(self.cfg.root), "--checkpoints-root", str(self.cfg.checkpoints_root)]
        if self.claim.action == "resume":
            cmd.append("--resume")
        elif opts.restart:
            cmd.append("--restart")
        if opts.promote:
            cmd.append("--promote")
        elif opts.register:
            cmd.append("--register")
        if opts.promote or opts.register:
            cmd += ["--registry", opts.registry_address]
        return cmd

    def run(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / SPEC_FILE).write_text(self.claim.spec_yaml, encoding="utf-8")
        stderr_path = self.folder / STDERR_FILE
        self.stderr_offset = stderr_path.stat().st_size if stderr_path.exists() else 0
        cmd = self.command()
        env = {**os.environ, **self.cfg.env, "PYTHONUNBUFFERED": "1"}
        try:
            with open(stderr_path, "ab") as err:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, cwd=self.folder, env=env,
                                        start_new_session=True)
        except OSError as exc:
            self.store.finish(self.job_id, self.cfg.name, JobState.FAILED, error=f"cannot start the job process: {exc}")
            return JobState.FAILED.value
        log.info("job %s: %s (attempt %d) on %s, pid %d: %s", self.job_id, self.claim.action, self.claim.attempt, self.cfg.name, proc.pid,
                 " ".join(cmd))
        assert proc.stdout is not None
        reader = threading.Thread(target=self._read, args=(proc.stdout,), name=f"job-{self.job_id}-stdout", daemon=True)
        reader.start()
        try:
            self.store.started(self.job_id, self.cfg.name, proc.pid)
        except LeaseLost:
            self.lost = True
        code = self._follow(proc)
        reader.join(timeout=30)
        self._drain()
        if self.lost:
            log.warning("job %s: lost its lease on %s; its process was stopped, the new owner carries on", self.job_id, self.cfg.name)
            return "lost"
        self._flush(final=True)
        state, error, result = self._judge(code)
        try:
            self.store.finish(self.job_id, self.cfg.name, state, error=error, result=result, exit_code=code)
        except LeaseLost:
            log.warning("job %s: ended (%s) after it was taken over; the new owner's outcome stands", self.job_id, state.value)
            return "lost"
        log.info("job %s: %s%s", self.job_id, state.value, f" ({error.splitlines()[0]})" if error else "")
        return state.value

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def _drain(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                continue
            try:
                value = json.loads(line)
                event = value if isinstance(value, dict) else None
            except ValueError:
                event = None  # a stray print of a library: counted, not parsed
            self.pending.append(event)
            self.events.append(event)

    def _flush(self, *, final: bool = False) -> bool:
        """Events to the database, renewing the lease; True when a cancel was
        asked. A database that does not answer keeps the events for the next
        poll; LeaseLost (another worker took the job over) ends the attempt."""
        from sqlalchemy.exc import OperationalError

        batch, self.pending = self.pending, []
        try:
            cancel = self.store.log(self.job_id, self.cfg.name, batch)
        except OperationalError as exc:
            self.pending = batch + self.pending
            log.warning("job %s: cannot write its events (%s); trying again", self.job_id, exc)
            if final:
                raise
            return False
        self.last_beat = time.monotonic()
        return cancel

    def _follow(self, proc: subprocess.Popen) -> int:
        self.last_beat = time.monotonic()
        kill_at: float | None = None
        while True:
            try:
                code = proc.wait(timeout=self.cfg.poll_seconds)
                return code
            except subprocess.TimeoutExpired:
                pass
            self._drain()
            if self.pending or time.monotonic() - self.last_beat >= self.cfg.heartbeat_seconds:
                try:
                    wants_cancel = self._flush()
                except LeaseLost:
                    wants_cancel, self.lost = True, True
                if wants_cancel and kill_at is None:
                    self.cancelled = not self.lost
                    log.info("job %s: %s: SIGTERM to process group %d", self.job_id, "lease lost" if self.lost else "cancelled", proc.pid)
                    _signal_group(proc.pid, signal.SIGTERM)
                    kill_at = time.monotonic() + self.cfg.cancel_grace
            if kill_at is not None and time.monotonic() >= kill_at:
                log.warning("job %s: still running %.0fs after SIGTERM; SIGKILL", self.job_id, self.cfg.cancel_grace)
                _signal_group(proc.pid, signal.SIGKILL)
                kill_at = float("inf")

    def _judge(self, code: int) -> tuple[JobState, str, dict[str, Any] | None]:
        events = [e for e in self.events if e is not None]
        result = next((e for e in reversed(events) if e.get("event") == "result"), None)
        failed = next((e for e in reversed(events) if e.get("event") in ("job_failed", "promotion_failed")), None)
        if result is not None and code == 0:
            return JobState.SUCCEEDED, "", {k: v for k, v in result.items() if k not in ("event", "time")}
        if self.cancelled:
            return JobState.CANCELLED, "cancelled", None
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return JobState.INTERRUPTED, f"its process was killed by {name}; resume the job to continue from its last saved state", None
        if code == 0:
            return JobState.FAILED, "its process exited without a result", None
        return JobState.FAILED, self._error_text(failed, code), None

    def _error_text(self, failed: Mapping[str, Any] | None, code: int) -> str:
        """The job process's own one-line error (`error: ...` on stderr, as
        `python -m trainer` writes it), else its failure event, else the end
        of this attempt's stderr (a traceback)."""
        path = self.folder / STDERR_FILE
        try:
            with open(path, "rb") as fp:
                fp.seek(self.stderr_offset)
                lines = fp.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        lines = lines[-200:]
        starts = [i for i, ln in enumerate(lines) if ln.startswith("error: ")]
        if starts:  # the message may go on over a few lines (a list of bad data lines, say)
            return "\n".join(lines[starts[-1]:starts[-1] + 50]).removeprefix("error: ")
        if failed is not None:
            return str(failed.get("error"))
        tail = "\n".join(lines[-15:])
        return f"its process exited with code {code}; the end of {path} on {self.cfg.name}:\n{tail}"


def _signal_group(pid: int, sig: int) -> None:
    """Signal the job's process group (the job process leads its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


__all__ = ["Busy", "WorkerConfig", "run_job"]
