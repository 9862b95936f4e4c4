"""The trainer service's core: jobs as subprocesses, a queue, cancel, resume,
restart recovery and the event streams WatchJob follows. Plain Python (no
gRPC): the servicer translates, this does.

A job runs as

    python -m trainer run -f <job>/spec.yaml --base-dir DIR --exit-with-parent PID [--resume] [--promote --registry ADDR]

in its own process group (session), stdout appended to <job>/events.jsonl
(the progress events as JSON lines, the last one the result), stderr to
<job>/stderr.log. Every process is started from one long-lived launcher
thread: `--exit-with-parent` asks Linux to SIGTERM the job when that thread
ends, so a killed service never leaves training running unobserved.

Life of a job:

    QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | INTERRUPTED
    QUEUED -> CANCELLED
    INTERRUPTED | FAILED | CANCELLED --ResumeJob--> QUEUED (the next process runs with --resume)

INTERRUPTED: the process ended without finishing and without an error of
its own: the service was stopped (it stops its jobs) or killed (the jobs die
with it), or the process was killed. On start the service looks at every
job its records say is RUNNING: a live process (same pid and start time) is
followed again; a gone one is judged from its event log (a `result` event:
it succeeded before dying; else interrupted). Resuming continues from the last
saved training state of the interrupted run (the run cache's --resume);
finished runs are reused, so the final result equals an uninterrupted run's.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtserve.errors import NotFoundError, PreconditionError, ValidationError
from mtserve.files import parse_yaml
from services.trainer.jobs import (
    RESUMABLE,
    STDERR_FILE,
    Attempt,
    EventReader,
    JobInfo,
    JobRecord,
    JobState,
    JobStore,
    Options,
    Progress,
    check_job_id,
    check_spec_files,
    events_since,
    new_job_id,
    utcnow,
)

log = logging.getLogger(__name__)

RegistryCheck = Callable[[str], None]


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), to
    tell our job process from a later process that got the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start is None:
        return True
    now = proc_start_ticks(pid)
    if now is None:
        return False
    if now != start:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class _Running:
    pid: int
    proc: subprocess.Popen | None  # None: adopted from an earlier service (not our child)
    start: int | None

    def ended(self) -> tuple[bool, int | None]:
        """(ended, exit code); the code is None for an adopted process (not our child)."""
        if self.proc is not None:
            code = self.proc.poll()
            return code is not None, code
        return not pid_alive(self.pid, self.start), None


class JobManager:
    def __init__(
        self,
        store: JobStore,
        *,
        registry_address: str,
        registry_check: RegistryCheck | None = None,
        max_running: int = 1,
        cancel_grace: float = 10.0,
        poll_seconds: float = 0.2,
        python: str = sys.executable,
        child_env: Mapping[str, str] | None = None,
        default_base_dir: str | None = None,
        root: Path | None = None,
        checkpoints_root: Path | None = None,
    ):
        """`root` / `checkpoints_root`: what jobs may touch (trainer.job.confine);
        None runs any job (a manager used in-process by its owner)."""
        self.store = store
        self.registry_address = registry_address
        self.registry_check = registry_check
        self.max_running = max_running
        self.cancel_grace = cancel_grace
        self.poll_seconds = poll_seconds
        self.python = python
        self.child_env = dict(child_env or {})
        self.default_base_dir = default_base_dir or (str(root) if root else os.getcwd())
        self.root, self.checkpoints_root = root, checkpoints_root
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self._records: dict[str, JobRecord] = {}
        self._running: dict[str, _Running] = {}
        self._tails: dict[str, tuple[EventReader, Progress]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # the launcher thread ends
        self._closing = False  # jobs ending now are interrupted, not failed
        self.draining = threading.Event()  # watch streams end
        self._opened = False

    # -- life ----------------------------------------------------------------------------
    def open(self) -> JobManager:
        """Own the jobs folder (refused while another service does), load
        the records, and settle the jobs they say are running."""
        if self._opened:
            return self
        self.store.lock()
        with self._lock:
            for record in self.store.all():
                self._records[record.id] = record
            self._recover()
        self._opened = True
        return self

    def start(self) -> JobManager:
        """Start the launcher thread (which starts queued jobs)."""
        self.open()
        self._thread = threading.Thread(target=self._loop, name="trainer-launcher", daemon=True)
        self._thread.start()
        return self

    def _recover(self) -> None:
        for record in self._records.values():
            if record.state is not JobState.RUNNING:
                continue
            attempt = record.attempts[-1] if record.attempts else None
            if attempt is not None and pid_alive(attempt.pid, attempt.proc_start):
                log.info("job %s: its process %d is still running; following it again", record.id, attempt.pid)
                self._running[record.id] = _Running(attempt.pid, None, attempt.proc_start)
            else:
                self._finalize(record, None, restarted=True)

    def drain(self) -> None:
        """End the watch streams (the server is shutting down)."""
        self.draining.set()
        with self.changed:
            self.changed.notify_all()

    def close(self) -> None:
        """Stop every running job (SIGTERM, SIGKILL after the grace period;
        they become INTERRUPTED and can be resumed), then the launcher."""
        self.drain()
        with self._lock:
            self._closing = True
            running = dict(self._running)
        for job_id, run in running.items():
            log.info("job %s: stopping its process %d (the service stops)", job_id, run.pid)
            _signal_group(run.pid, signal.SIGTERM)
        self._wait_ended(list(running), self.cancel_grace, kill=True)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.store.unlock()

    # -- the launcher thread -------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("trainer launcher tick failed")
            with self.changed:
                self.changed.wait(self.poll_seconds)
        # Final reaping: processes that ended while we were stopping.
        try:
            self._tick(launch=False)
        except Exception:  # pragma: no cover
            log.exception("trainer launcher final tick failed")

    def _tick(self, launch: bool = True) -> None:
        with self._lock:
            moved = False
            for job_id, run in list(self._running.items()):
                if self._tail(job_id):
                    moved = True
                ended, code = run.ended()
                if ended:
                    del self._running[job_id]
                    self._tail(job_id)
                    self._finalize(self._records[job_id], code)
                    moved = True
            if launch and not self._closing:
                queued = sorted((r for r in self._records.values() if r.state is JobState.QUEUED), key=lambda r: (r.queued_at, r.id))
                for record in queued[: max(0, self.max_running - len(self._running))]:
                    self._launch(record)
                    moved = True
            if moved:
                self.changed.notify_all()

    def _command(self, record: JobRecord) -> list[str]:
        opts = record.options
        cmd = [
            self.python, "-m", "trainer", "run", "-f", str(self.store.folder(record.id) / "spec.yaml"),
            "--base-dir", opts.base_dir, "--exit-with-parent", str(os.getpid()),
        ]
        if self.root is not None:  # the job process checks the spec's paths again itself
            cmd += ["--root", str(self.root), "--checkpoints-root", str(self.checkpoints_root or self.root)]
        if record.next_action == "resume" or (not record.attempts and opts.resume):
            cmd.append("--resume")
        elif not record.attempts and opts.restart:
            cmd.append("--restart")
        if opts.promote:
            cmd.append("--promote")
        elif opts.register:
            cmd.append("--register")
        if opts.promote or opts.register:
            cmd += ["--registry", opts.registry_address]
        return cmd

    def _launch(self, record: JobRecord) -> None:
        folder = self.store.folder(record.id)
        events = self.store.events_path(record.id)
        action = "resume" if record.next_action == "resume" else "start"
        cmd = self._command(record)
        env = {**os.environ, **self.child_env, "PYTHONUNBUFFERED": "1"}
        self.store.append_event(record.id, {"event": "attempt_started", "job": record.name, "id": record.id, "action": action,
                                            "attempt": len(record.attempts) + 1})
        offset = events.stat().st_size
        stderr_path = folder / STDERR_FILE
        err_offset = stderr_path.stat().st_size if stderr_path.exists() else 0
        try:
            with open(events, "ab") as out, open(folder / STDERR_FILE, "ab") as err:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=folder, env=env, start_new_session=True)
        except OSError as exc:
            record.state, record.error, record.finished_at = JobState.FAILED, f"cannot start the job process: {exc}", utcnow()
            self.store.save(record)
            return
        start = proc_start_ticks(proc.pid)
        record.attempts.append(Attempt(action=action, pid=proc.pid, started_at=utcnow(), events_offset=offset, stderr_offset=err_offset,
                                       proc_start=start))
        record.state, record.started_at, record.finished_at, record.error = JobState.RUNNING, record.attempts[-1].started_at, "", ""
        record.next_action = "resume"  # whatever happens, a later attempt continues this one
        self.store.save(record)
        self._running[record.id] = _Running(proc.pid, proc, start)
        log.info("job %s: %s, pid %d: %s", record.id, action, proc.pid, " ".join(cmd))

    def _finalize(self, record: JobRecord, code: int | None, *, restarted: bool = False) -> None:
        """The job's process has ended: decide what that means."""
        attempt = record.attempts[-1] if record.attempts else None
        events = events_since(self.store.events_path(record.id), attempt.events_offset if attempt else 0)
        result = next((e for e in reversed(events) if e.get("event") == "result"), None)
        failed = next((e for e in reversed(events) if e.get("event") in ("job_failed", "promotion_failed")), None)
        error = ""
        if result is not None and code in (0, None):
            state = JobState.SUCCEEDED
            record.result = {k: v for k, v in result.items() if k not in ("event", "time")}
        elif record.cancel_requested:
            state, error = JobState.CANCELLED, "cancelled"
        elif self._closing:
            state, error = JobState.INTERRUPTED, "the trainer service stopped (and its job processes with it); resume the job to continue"
        elif code is None:
            if failed is not None:
                state, error = JobState.FAILED, str(failed.get("error", "failed"))
            else:
                why = "while the trainer service was down" if restarted else "while no trainer service started it"
                state, error = JobState.INTERRUPTED, f"its process ended {why} (the service was stopped or killed); resume the job to continue"
        elif code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            state, error = JobState.INTERRUPTED, f"its process was killed by {name}; resume the job to continue from its last saved state"
        elif code == 0:
            state, error = JobState.FAILED, "its process exited without a result"
        else:
            state, error = JobState.FAILED, self._error_text(record, failed, code)
        record.state, record.error, record.finished_at = state, error, utcnow()
        record.cancel_requested = False
        if attempt is not None:
            attempt.ended_at, attempt.exit_code, attempt.outcome = record.finished_at, code, state.value
        self.store.append_event(record.id, {"event": "job_state", "job": record.name, "id": record.id, "state": state.value, "error": error,
                                            "exit_code": code})
        self.store.save(record)
        log.info("job %s: %s%s", record.id, state.value, f" ({error})" if error else "")

    def _error_text(self, record: JobRecord, failed: Mapping[str, Any] | None, code: int) -> str:
        """The job process's own one-line error (`error: ...` on stderr, as
        `python -m trainer` writes it), else its failure event, else the end
        of this attempt's stderr (a traceback)."""
        path = self.store.folder(record.id) / STDERR_FILE
        offset = record.attempts[-1].stderr_offset if record.attempts else 0
        try:
            with open(path, "rb") as fp:
                fp.seek(offset)
                lines = fp.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        attempt_lines = lines[-200:]
        starts = [i for i, ln in enumerate(attempt_lines) if ln.startswith("error: ")]
        if starts:  # the message may go on over a few lines (a list of bad data lines, say)
            return "\n".join(attempt_lines[starts[-1]:starts[-1] + 50]).removeprefix("error: ")
        if failed is not None:
            return str(failed.get("error"))
        tail = "\n".join(attempt_lines[-15:])
        return f"its process exited with code {code}; the end of {path}:\n{tail}"

    def _tail(self, job_id: str) -> int:
        """Read the job's new events into its progress; returns how many."""
        entry = self._tails.get(job_id)
        if entry is None:
            entry = self._tails[job_id] = (EventReader(self.store.events_path(job_id)), Progress())
        reader, progress = entry
        lines = reader.read()
        for _, event in lines:
            if event is not None and event.get("event") == "attempt_started":
                progress = Progress(events=progress.events)  # progress is per attempt
                self._tails[job_id] = (reader, progress)
            progress.update(event)
        return len(lines)

    # -- the API ---------------------------------------------------------------------------
    def submit(
        self, spec_yaml: str, *, base_dir: str = "", promote: bool = False, register: bool = False, registry_address: str = "",
        resume: bool = False, restart: bool = False,
    ) -> JobInfo:
        from mtserve.paths import caller_path, confined_path
        from trainer.job import confine, parse_job

        if resume and restart:
            raise ValidationError("restart", "give resume or restart, not both", True)
        base = base_dir or self.default_base_dir
        caller_path(base, "base_dir")
        if self.root is not None:  # confined before anything is read there: no existence oracle outside the root
            confined_path(base, "base_dir", [self.root.expanduser().resolve()], "the trainer root (setting trainer.root)")
        if not os.path.isdir(base):
            raise ValidationError("base_dir", "is not a folder the trainer service can see", base)
        if not spec_yaml.strip():
            raise ValidationError("spec_yaml", "is empty: give the job spec's YAML text", "", show_value=False)
        data = parse_yaml(spec_yaml, "spec_yaml")
        spec = parse_job(data, base_dir=base, source="spec_yaml")  # ValidationError names the field
        if self.root is not None:
            confine(spec, self.root, self.checkpoints_root or self.root)
        check_spec_files(spec)
        promote = promote or spec.promote
        address = registry_address or self.registry_address
        if (promote or register) and self.registry_check is not None:
            self.registry_check(address)
        record = JobRecord(
            id=new_job_id(spec.name), name=spec.name, state=JobState.QUEUED, created_at=utcnow(),
            options=Options(promote=promote, register=register or promote, registry_address=address if (promote or register) else "",
                            base_dir=base, resume=resume, restart=restart),
        )
        record.queued_at = record.created_at
        with self._lock:
            self.store.create(record, spec_yaml)
            self.store.append_event(record.id, {"event": "job_queued", "job": record.name, "id": record.id})
            self._records[record.id] = record
            self.changed.notify_all()
            return self._info(record)

    def _record(self, job_id: str) -> JobRecord:
        check_job_id(job_id)
        record = self._records.get(job_id)
        if record is None:
            raise NotFoundError(f"unknown job {job_id!r}")
        return record

    def _info(self, record: JobRecord) -> JobInfo:
        self._tail(record.id)
        progress = self._tails[record.id][1]
        try:
            spec = self.store.spec(record.id)
        except OSError:
            spec = ""
        return JobInfo(
            id=record.id, name=record.name, state=record.state, created_at=record.created_at, started_at=record.started_at,
            finished_at=record.finished_at, options=Options(**vars(record.options)), spec_yaml=spec,
            progress=Progress(**{**vars(progress), "dev": dict(progress.dev)}), error=record.error,
            attempts=[Attempt(**vars(a)) for a in record.attempts], result=record.result, folder=str(self.store.folder(record.id)),
        )

    def get(self, job_id: str) -> JobInfo:
        with self._lock:
            return self._info(self._record(job_id))

    def list(self, *, states: Sequence[JobState] = (), name: str = "", limit: int = 0) -> list[JobInfo]:
        with self._lock:
            records = sorted(self._records.values(), key=lambda r: (r.created_at, r.id), reverse=True)
            records = [r for r in records if (not states or r.state in states) and (not name or r.name == name)]
            if limit:
                records = records[:limit]
            return [self._info(r) for r in records]

    def cancel(self, job_id: str) -> JobInfo:
        with self._lock:
            record = self._record(job_id)
            if record.state in (JobState.QUEUED, JobState.INTERRUPTED):
                was = record.state.value
                record.state, record.error, record.finished_at = JobState.CANCELLED, f"cancelled while {was}", utcnow()
                self.store.append_event(record.id, {"event": "job_state", "job": record.name, "id": record.id, "state": "cancelled", "error": record.error})
                self.store.save(record)
                self.changed.notify_all()
                return self._info(record)
            if record.state is not JobState.RUNNING:
                raise PreconditionError(f"job {job_id} has already {record.state.value}; only queued, running or interrupted jobs can be cancelled")
            record.cancel_requested = True
            self.store.save(record)
            run = self._running.get(job_id)
        if run is not None:
            log.info("job %s: cancelling (SIGTERM to process group %d)", job_id, run.pid)
            _signal_group(run.pid, signal.SIGTERM)
            self._wait_ended([job_id], self.cancel_grace, kill=True)
        return self.get(job_id)

    def _wait_ended(self, job_ids: Sequence[str], grace: float, *, kill: bool) -> None:
        """Wait for the jobs' processes to be reaped; SIGKILL their groups
        after `grace` seconds."""
        deadline = time.monotonic() + grace
        killed = False
        with self.changed:
            while True:
                left = [j for j in job_ids if j in self._running]
                if not left:
                    return
                now = time.monotonic()
                if now >= deadline:
                    if killed or not kill:
                        if now >= deadline + 30:
                            log.error("jobs %s did not end after SIGKILL", left)
                            return
                    else:
                        for j in left:
                            log.warning("job %s: still running %.0fs after SIGTERM; SIGKILL", j, grace)
                            _signal_group(self._running[j].pid, signal.SIGKILL)
                        killed = True
                if self._stop.is_set():  # no launcher to reap them: do it here
                    self._tick(launch=False)
                self.changed.wait(0.1)

    def resume(self, job_id: str) -> JobInfo:
        with self._lock:
            record = self._record(job_id)
            if record.state not in RESUMABLE:
                raise PreconditionError(
                    f"job {job_id} is {record.state.value}; only interrupted, failed or cancelled jobs can be resumed"
                )
            opts = record.options
        if (opts.promote or opts.register) and self.registry_check is not None:
            self.registry_check(opts.registry_address)
        with self._lock:
            if record.state not in RESUMABLE:  # resumed by someone else meanwhile
                raise PreconditionError(f"job {job_id} is {record.state.value} already")
            record.state, record.error, record.next_action, record.queued_at = JobState.QUEUED, "", "resume", utcnow()
            self.store.append_event(record.id, {"event": "job_queued", "job": record.name, "id": record.id, "action": "resume"})
            self.store.save(record)
            self.changed.notify_all()
            return self._info(record)

    def watch(self, job_id: str, from_seq: int = 0, is_active: Callable[[], bool] = lambda: True) -> Iterator[tuple[str, Any]]:
        """("job", JobInfo) first and on every state change; ("event", (seq,
        event)) for each event from `from_seq`; ends once the job is not
        queued or running and its log is read to the end, or on drain."""
        with self._lock:
            info = self._info(self._record(job_id))
        yield "job", info
        reader = EventReader(self.store.events_path(job_id))
        seen = (info.state, len(info.attempts))
        while True:
            with self._lock:
                record = self._records[job_id]
                state = (record.state, len(record.attempts))
            for seq, event in reader.read():
                if event is not None and seq >= from_seq:
                    yield "event", (seq, event)
            if state != seen:
                with self._lock:
                    info = self._info(self._records[job_id])
                seen = (info.state, len(info.attempts))
                yield "job", info
            if not seen[0].active:
                # The state was read before the log: the log holds every
                # event of the ended process (and the service's job_state).
                for seq, event in reader.read():
                    if event is not None and seq >= from_seq:
                        yield "event", (seq, event)
                return
            if self.draining.is_set() or not is_active():
                return
            with self.changed:
                self.changed.wait(self.poll_seconds)


def _signal_group(pid: int, sig: int) -> None:
    """Signal the job's process group (the job process leads its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


__all__ = ["JobManager", "pid_alive", "proc_start_ticks"]
