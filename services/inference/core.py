"""The inference service's core, plain Python (no gRPC): the registry state
being served, one engine (the local torch Engine, or a TgiEngine for a
checkpoint of kind tgi, whose model runs on a TGI server) and Batcher per
routed checkpoint, and the resolution of a request to (task version,
checkpoint).

State changes (from the registry's watch or the last-known-good file) are
applied off the request path: the checkpoints a new route names are loaded
first, then the whole serving view (tasks, routes, engines) is swapped in one
assignment. A request sees the old view or the new one, never a mix, and a
promotion never sends traffic to a model that is still loading.

Threads. Each engine, and its tokenizer, is used by one thread at a time: its
batcher's worker, or the apply thread holding the batcher's engine lock
(checking a new task's labels against the tokenizer). Fast tokenizers are not
safe to share: encoding toggles state on the Rust object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from mtserve.checkpoints import manifest_sha256
from mtserve.config import TgiSettings
from mtserve.engine import Engine, Prediction, Request
from mtserve.errors import (
    IntegrityError,
    MtserveError,
    NotFoundError,
    OverloadedError,
    PreconditionError,
    UnavailableError,
    ValidationError,
)
from mtserve.inputs import Input, check_task_accepts
from mtserve.predictions import Answer, ScoringBackend, Timing
from mtserve.records import (
    CheckpointInfo,
    CheckpointRecord,
    PolicyRecord,
    RegistryState,
    Route,
    ServingInfo,
    TaskInfo,
    TaskRecord,
    TaskStatus,
)
from mtserve.tasks import Task, TruncationPolicy, check_name
from services.common.metrics import LABELS_SERVED, MODEL_BYTES, MODEL_LOAD_SECONDS, REFUSED
from services.inference.batcher import Batcher, BatchResult

log = logging.getLogger(__name__)

Loader = Callable[[CheckpointRecord], Any]  # -> mtserve.models.LoadedModel (mtserve.tgi.LoadedTgi for kind tgi)
# Registers a callback run when the call ends (gRPC: context.add_callback);
# returns False when the call has already ended.
OnEnd = Callable[[Callable[[], None]], Any]

# How long a call waits for its batch beyond its own deadline. The caller's
# clock decides (it sees DEADLINE_EXCEEDED, and the end-of-call callback
# cancels the queued job at once); this only bounds a thread whose call
# vanished without that callback.
WAIT_SLACK_SECONDS = 5.0
# A checkpoint that failed to load is tried again when the registry sends a
# change and this long has passed (or its record changed): every change
# would otherwise re-hash a broken multi-GB folder and hold up the watcher.
RETRY_FAILED_LOAD_SECONDS = 60.0


class _BatchOptions(TypedDict):
    """The Batcher's keyword arguments (max_batch_tokens also sizes the Engine)."""

    max_batch_tokens: int
    max_batch_requests: int
    max_wait_ms: float
    queue_size: int


@dataclass
class Model:
    checkpoint: CheckpointRecord
    loaded: Any  # LoadedModel, or LoadedTgi for a checkpoint served by TGI
    engine: ScoringBackend  # Engine (local torch) or TgiEngine
    batcher: Batcher
    loaded_at: str


@dataclass(frozen=True)
class Serving:
    """One immutable view of what is served; replaced whole on every change."""

    state: RegistryState
    source: str  # "registry" | "last-known-good"
    latest: dict[str, TaskRecord]
    routes: dict[str, Route]
    versions: dict[tuple[str, int], TaskRecord]
    models: dict[str, Model]
    failures: dict[str, str] = field(default_factory=dict)  # checkpoint id -> why it is not loaded
    task_errors: dict[str, str] = field(default_factory=dict)  # task -> why its checkpoint cannot serve it

    @property
    def policy(self) -> TruncationPolicy:
        return (self.state.policy or PolicyRecord()).policy


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _weights_dtype(loaded: Any) -> str:
    """float32, bfloat16, ...; "" for a checkpoint without local weights (TGI)."""
    model = getattr(loaded, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return ""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def count_served(answer: Answer) -> None:
    """Labels served per task and checkpoint (a metric: drift between days)."""
    p = answer.prediction
    if p.text is not None:
        return  # generation: free text is not a label
    # Single-label answers carry (label,); a multi-label answer with no label
    # over its threshold is counted as the empty set.
    for label in p.labels or ("{}",):
        LABELS_SERVED.labels(p.task, answer.checkpoint_id, label).inc()


class InferenceCore:
    def __init__(
        self,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_tokens: int = 8192,
        max_batch_requests: int = 64,
        max_wait_ms: float = 5.0,
        queue_size: int = 256,
        max_inflight_calls: int | None = None,
        loader: Loader | None = None,
        tgi: TgiSettings | None = None,
    ):
        self.device, self.dtype = device, dtype
        self.tgi = tgi or TgiSettings()  # how checkpoints of kind tgi reach their server
        self.batch_options: _BatchOptions = {
            "max_batch_tokens": max_batch_tokens, "max_batch_requests": max_batch_requests, "max_wait_ms": max_wait_ms, "queue_size": queue_size
        }
        self.loader = loader or self._load
        # Admission: calls waiting for the model at once (None: unbounded). A
        # call beyond it is refused before it queues, so overload is a prompt
        # RESOURCE_EXHAUSTED the client backs off from, not minutes of latency.
        self.max_inflight_calls = max_inflight_calls
        self._admission = threading.BoundedSemaphore(max_inflight_calls) if max_inflight_calls else None
        self._serving: Serving | None = None
        self._failed: dict[str, tuple[CheckpointRecord, float, str]] = {}  # id -> (record, when, why)
        self._apply_lock = threading.Lock()
        self._closed = False
        self.ready = threading.Event()  # set once a state has been applied (models of its routes loaded)
        self.registry_connected = False  # kept up to date by the watcher
        self._listeners: list[Callable[[Serving], None]] = []

    @classmethod
    def from_settings(cls, settings: Any, loader: Loader | None = None) -> InferenceCore:
        s = settings.inference
        return cls(
            device=settings.device,
            dtype=settings.dtype,
            max_batch_tokens=s.max_batch_tokens,
            max_batch_requests=s.max_batch_requests,
            max_wait_ms=s.max_wait_ms,
            queue_size=s.queue_size,
            max_inflight_calls=s.max_inflight_calls,
            loader=loader,
            tgi=s.tgi,
        )

    def on_applied(self, listener: Callable[[Serving], None]) -> None:
        self._listeners.append(listener)

    @property
    def serving(self) -> Serving | None:
        return self._serving

    # -- loading ---------------------------------------------------------------------------
    def _load(self, record: CheckpointRecord) -> Any:
        from mtserve.serving_precision import load_for_serving

        folder = Path(record.path)
        # The folder must still hold the artefact the registry registered
        # (checked before an expensive load); load_checkpoint then verifies
        # every file hash against that manifest. No manifest, no load: a
        # folder stripped of it would otherwise load unverified.
        if not (folder / "manifest.json").is_file():
            raise IntegrityError(f"checkpoint {record.id!r}: its manifest.json is missing; it cannot be verified, so it is not served")
        if manifest_sha256(folder) != record.manifest_sha256:
            raise IntegrityError(f"checkpoint {record.id!r}: {folder}/manifest.json differs from the manifest registered (sha256 {record.manifest_sha256[:12]}...)")
        loaded: Any
        if record.kind == "tgi":  # no weights: the model runs on the TGI server the manifest names
            from mtserve.tgi import load_tgi_checkpoint

            loaded = load_tgi_checkpoint(folder, self.tgi)
        else:
            # `dtype: auto` may measure bf16 against float32 here (mtserve/serving_precision.py).
            loaded = load_for_serving(folder, device=self.device, dtype=self.dtype)
        if loaded.manifest.id != record.id:
            raise IntegrityError(f"checkpoint {record.id!r}: the folder {folder} holds checkpoint {loaded.manifest.id!r}")
        return loaded

    def _engine(self, loaded: Any, policy: TruncationPolicy, checkpoint_id: str) -> ScoringBackend:
        if getattr(getattr(loaded, "manifest", None), "kind", None) == "tgi":
            from mtserve.tgi import TgiEngine

            return TgiEngine(loaded, policy, name=checkpoint_id, settings=self.tgi)
        return Engine(
            loaded.model, loaded.tokenizer, policy, max_batch_tokens=self.batch_options["max_batch_tokens"], style=loaded.manifest.prompt_style, name=checkpoint_id
        )

    # -- applying registry state -------------------------------------------------------------
    def apply(self, state: RegistryState, source: str = "registry") -> Serving:
        """Load what the state's routes need, then swap the serving view."""
        with self._apply_lock:
            if self._closed:
                raise UnavailableError("the inference service is shutting down")
            old = self._serving
            latest = state.latest()
            routes = state.route_table()
            checkpoints = state.checkpoint_table()
            policy = (state.policy or PolicyRecord()).policy
            # Only active tasks need their checkpoint loaded.
            needed: dict[str, list[str]] = {}
            for name, route in routes.items():
                record = latest.get(name)
                if record is not None and record.status is TaskStatus.ACTIVE:
                    needed.setdefault(route.checkpoint_id, []).append(name)
            models: dict[str, Model] = {}
            failures: dict[str, str] = {}
            for cid in sorted(needed):
                current = old.models.get(cid) if old else None
                if current is not None:
                    if old is not None and old.policy != policy:
                        with current.batcher.engine_lock:  # building a renderer uses the tokenizer
                            engine = self._engine(current.loaded, policy, cid)
                        current = replace(current, engine=engine)
                    models[cid] = current
                    continue
                checkpoint = checkpoints.get(cid)
                if checkpoint is None:
                    failures[cid] = "it is not a registered checkpoint"
                    continue
                started = time.monotonic()
                failed = self._failed.get(cid)
                if failed is not None and failed[0] == checkpoint and started - failed[1] < RETRY_FAILED_LOAD_SECONDS:
                    failures[cid] = failed[2]
                    continue
                try:
                    loaded = self.loader(checkpoint)
                except Exception as exc:  # noqa: BLE001 - any load failure disables just its routes
                    failures[cid] = f"{type(exc).__name__}: {exc}"
                    self._failed[cid] = (checkpoint, started, failures[cid])
                    log.error("cannot load checkpoint %s from %s: %s", cid, checkpoint.path, exc)
                    continue
                self._failed.pop(cid, None)
                engine = self._engine(loaded, policy, cid)
                batcher = Batcher(engine, name=cid, **self.batch_options)
                models[cid] = Model(checkpoint, loaded, engine, batcher, _now())
                seconds = time.monotonic() - started
                MODEL_LOAD_SECONDS.labels(cid).set(seconds)
                model = getattr(loaded, "model", None)
                if model is not None and hasattr(model, "parameters"):
                    MODEL_BYTES.labels(cid).set(sum(p.numel() * p.element_size() for p in model.parameters()))
                log.info("loaded checkpoint %s in %.1fs; %s", cid, seconds, getattr(loaded, "dtype_reason", "") or "dtype not reported")
            # Tokenizer-level checks (labels that tokenize alike) per routed task.
            versions = state.task_versions()
            task_errors: dict[str, str] = {}
            for cid, names in needed.items():
                model = models.get(cid)
                if model is None:
                    continue
                with model.batcher.engine_lock:
                    for name in names:
                        record = versions.get((name, routes[name].task_version))
                        if record is None:
                            task_errors[name] = f"version {routes[name].task_version} is not in the registry state"
                            continue
                        try:
                            model.engine.validate_task(record.task)
                        except ValidationError as exc:
                            task_errors[name] = str(exc)
            serving = Serving(state, source, latest, routes, versions, models, failures, task_errors)
            for model in models.values():  # a new policy reaches the batchers between two batches
                if model.batcher.engine is not model.engine:
                    with model.batcher.engine_lock:
                        model.batcher.engine = model.engine
            self._serving = serving
            if old is not None:
                for cid, model in old.models.items():
                    if cid not in models:
                        log.info("unloading checkpoint %s (no route names it)", cid)
                        model.batcher.close(wait=False)  # queued work finishes; then the worker ends
            self.ready.set()
        for listener in self._listeners:
            listener(serving)
        return serving

    # -- resolving and scoring -----------------------------------------------------------------
    def _resolve(self, serving: Serving, name: str, where: str) -> tuple[Task, Model]:
        check_name(name, where)
        latest = serving.latest.get(name)
        if latest is None:
            raise NotFoundError(f"unknown task {name!r}")
        if latest.status is TaskStatus.RETIRED:
            raise PreconditionError(f"task {name!r} is retired and not served; register it again to serve it")
        route = serving.routes.get(name)
        if route is None:
            raise PreconditionError(
                f"task {name!r} has no route yet: set one with `mtserve routes set {name} CHECKPOINT` or promote a trained checkpoint"
            )
        model = serving.models.get(route.checkpoint_id)
        if model is None:
            reason = serving.failures.get(route.checkpoint_id, "it is not loaded")
            raise PreconditionError(f"task {name!r} is routed to checkpoint {route.checkpoint_id!r}, which could not be loaded: {reason}")
        if name in serving.task_errors:
            raise PreconditionError(f"task {name!r} cannot be served by checkpoint {route.checkpoint_id!r}: {serving.task_errors[name]}")
        return serving.versions[(name, route.task_version)].task, model

    def _serving_now(self) -> Serving:
        serving = self._serving
        if self._closed:
            raise UnavailableError("the inference service is shutting down")
        if serving is None:
            raise UnavailableError("the inference service has no task definitions yet (registry unreachable and no last-known-good copy)")
        return serving

    def _score(
        self, resolved: Sequence[tuple[Task, Model]], inp: Input, truncate: bool, timeout: float | None, on_end: OnEnd | None
    ) -> list[Answer]:
        """One job per checkpoint (so an input's prefix is computed once per
        model), all submitted before any is awaited; admitted first."""
        admission = self._admission
        if admission is not None and not admission.acquire(blocking=False):
            REFUSED.labels("inference", "admission").inc()
            raise OverloadedError(
                f"the inference service has {self.max_inflight_calls} calls waiting for the model, its limit "
                "(inference.max_inflight_calls); retry with backoff"
            )
        try:
            return self._score_admitted(resolved, inp, truncate, timeout, on_end)
        finally:
            if admission is not None:
                admission.release()

    def _score_admitted(
        self, resolved: Sequence[tuple[Task, Model]], inp: Input, truncate: bool, timeout: float | None, on_end: OnEnd | None
    ) -> list[Answer]:
        groups: dict[str, list[int]] = {}
        for i, (_, model) in enumerate(resolved):
            groups.setdefault(model.checkpoint.id, []).append(i)
        pending: list[tuple[str, list[int], Future]] = []
        try:
            for cid, slots in groups.items():
                model = resolved[slots[0]][1]
                pending.append((cid, slots, model.batcher.submit([Request(resolved[i][0], inp, truncate) for i in slots])))
        except MtserveError:
            for _, _, future in pending:
                future.cancel()
            raise
        def cancel() -> None:  # a job not yet running is dropped; a running one finishes
            for _, _, f in pending:
                f.cancel()

        if on_end is not None and on_end(cancel) is False:
            cancel()
        deadline = None if timeout is None else time.monotonic() + timeout + WAIT_SLACK_SECONDS
        answers: list[Answer | None] = [None] * len(resolved)
        errors: dict[int, MtserveError] = {}
        for cid, slots, future in pending:
            try:
                result: BatchResult = future.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except (FutureTimeout, CancelledError):
                cancel()
                raise UnavailableError("the call ended (deadline passed or cancelled) while it waited for its batch") from None
            for i, item in zip(slots, result.results):
                if isinstance(item, Prediction):
                    answers[i] = Answer(item, cid, Timing(result.queue_ms, result.compute_ms))
                else:
                    errors[i] = item
        if errors:
            raise errors[min(errors)]  # the first failing task, in request order
        for answer in answers:
            count_served(answer)  # type: ignore[arg-type]
        return answers  # type: ignore[return-value]

    def classify(
        self,
        task: str,
        inp: Input,
        *,
        truncate: bool = True,
        timeout: float | None = None,
        on_end: OnEnd | None = None,
        generate: bool = False,
    ) -> Answer:
        """One task: a classification task (Classify) or, with `generate`, a
        generation task (Generate). `timeout` is the caller's remaining time;
        `on_end` lets the caller cancel the queued work when it goes away."""
        serving = self._serving_now()
        resolved = self._resolve(serving, task, "task")
        if resolved[0].is_generation and not generate:
            raise ValidationError("task", f"task {task!r} is a generation task; call Generate", task)
        if generate and not resolved[0].is_generation:
            raise ValidationError("task", f"task {task!r} is a {resolved[0].taxonomy.value} task, not a generation task; call Classify", task)
        check_task_accepts(resolved[0], inp)
        return self._score([resolved], inp, truncate, timeout, on_end)[0]

    def classify_many(
        self, tasks: Sequence[str], inp: Input, *, truncate: bool = True, timeout: float | None = None, on_end: OnEnd | None = None
    ) -> tuple[list[Answer], list[tuple[str, str]]]:
        """Named tasks (generation ones included), or every active
        classification task that applies to the input's kind and channel.
        Returns the answers and, when none was named, the applicable tasks
        left out with the reason."""
        serving = self._serving_now()
        skipped: list[tuple[str, str]] = []
        if tasks:
            seen: dict[str, int] = {}
            for i, name in enumerate(tasks):
                if name in seen:
                    raise ValidationError(f"tasks[{i}]", f"names a task twice (also tasks[{seen[name]}])", name)
                seen[name] = i
            resolved = [self._resolve(serving, name, f"tasks[{i}]") for i, name in enumerate(tasks)]
            for i, (task, _) in enumerate(resolved):
                check_task_accepts(task, inp, f"input (for tasks[{i}] {task.name!r})")
        else:
            resolved = []
            channel = getattr(inp, "channel", None)
            for name in sorted(serving.latest):
                record = serving.latest[name]
                route = serving.routes.get(name)
                task = serving.versions[(name, route.task_version)].task if route and (name, route.task_version) in serving.versions else record.task
                if record.status is not TaskStatus.ACTIVE or task.is_generation or not task.applies_to(inp.kind, channel):
                    continue
                try:
                    resolved.append(self._resolve(serving, name, "task"))
                except PreconditionError as exc:
                    skipped.append((name, str(exc)))
            if not resolved:
                return [], skipped
        return self._score(resolved, inp, truncate, timeout, on_end), skipped

    # -- status and shutdown ---------------------------------------------------------------------
    def info(self) -> ServingInfo:
        serving = self._serving
        if serving is None:
            return ServingInfo((), (), 0, 0, self.registry_connected, "")
        by_checkpoint: dict[str, list[str]] = {}
        for name, route in serving.routes.items():
            if name in serving.latest and serving.latest[name].status is TaskStatus.ACTIVE:
                by_checkpoint.setdefault(route.checkpoint_id, []).append(name)
        checkpoints = []
        for cid in sorted(by_checkpoint):
            model = serving.models.get(cid)
            record = model.checkpoint if model else serving.state.checkpoint_table().get(cid)
            checkpoints.append(
                CheckpointInfo(
                    id=cid,
                    path=record.path if record else "",
                    loaded=model is not None,
                    error="" if model else serving.failures.get(cid, ""),
                    queue_depth=model.batcher.depth if model else 0,
                    tasks=tuple(sorted(by_checkpoint[cid])),
                    dtype=_weights_dtype(model.loaded) if model else "",
                    dtype_reason=getattr(model.loaded, "dtype_reason", "") if model else "",
                )
            )
        tasks = []
        for name in sorted(serving.latest):
            if serving.latest[name].status is not TaskStatus.ACTIVE:
                continue
            task_route = serving.routes.get(name)
            try:
                self._resolve(serving, name, "task")
                ok, reason = True, ""
            except MtserveError as exc:
                ok, reason = False, str(exc)
            tasks.append(TaskInfo(name, task_route.task_version if task_route else 0, task_route.checkpoint_id if task_route else "", ok, reason))
        depth = sum(c.queue_depth for c in checkpoints)
        return ServingInfo(tuple(checkpoints), tuple(tasks), depth, serving.state.revision, self.registry_connected, serving.source)

    def close(self) -> None:
        """Stop taking work; queued batches finish; workers end."""
        with self._apply_lock:
            self._closed = True
            serving = self._serving
        if serving is not None:
            for model in serving.models.values():
                model.batcher.close(wait=True)
