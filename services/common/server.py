"""What every mtserve gRPC server shares: the error interceptor, health and
reflection, explicit message sizes, and graceful shutdown.

The interceptor is the one place where domain errors (mtserve.errors) become
status codes; servicers just raise. It also counts calls in flight, so that
shutdown can wait for them, and refuses new calls with UNAVAILABLE once
draining has begun.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mtserve.errors import (
    IntegrityError,
    MtserveError,
    NotFoundError,
    OverloadedError,
    PreconditionError,
    UnavailableError,
    ValidationError,
)

log = logging.getLogger(__name__)

STATUS_OF: tuple[tuple[type[MtserveError], grpc.StatusCode], ...] = (
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    # An artefact that does not match its manifest: the request is well formed
    # and retrying cannot help until someone fixes the files on disk, which is
    # exactly "the system is not in a state to do this" (FAILED_PRECONDITION),
    # not a bad argument and not a server bug.
    (IntegrityError, grpc.StatusCode.FAILED_PRECONDITION),
)

# Health checks and reflection keep answering while draining: a load balancer
# must be able to read NOT_SERVING, not a refused call.
_ALWAYS_ALLOWED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def status_of(exc: MtserveError) -> grpc.StatusCode | None:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return None


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps domain errors to status codes, hides everything else behind
    INTERNAL (logged with an id the caller can quote), tracks calls in
    flight, and refuses new calls with UNAVAILABLE while draining."""

    def __init__(self, service: str):
        self.service = service
        self.draining = threading.Event()
        self._inflight = 0
        self._idle = threading.Condition()

    # -- bookkeeping ---------------------------------------------------------------
    @property
    def inflight(self) -> int:
        with self._idle:
            return self._inflight

    def _enter(self) -> None:
        with self._idle:
            self._inflight += 1

    def _exit(self) -> None:
        with self._idle:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; False if the timeout passed first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- mapping -------------------------------------------------------------------
    def _fail(self, context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
        if context.code() not in (None, grpc.StatusCode.OK):
            raise exc  # the servicer aborted on purpose: keep its status
        code = status_of(exc) if isinstance(exc, MtserveError) else None
        if code is None:
            ref = uuid.uuid4().hex[:12]
            log.error("%s %s failed (error id %s)", self.service, method, ref, exc_info=exc)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method} (error id {ref}; details are in the server log)")
        log.info("%s %s -> %s: %s", self.service, method, code.name, exc)  # type: ignore[union-attr]
        context.abort(code, str(exc))

    def _refuse_if_draining(self, context: grpc.ServicerContext, method: str) -> None:
        if self.draining.is_set() and not method.startswith(_ALWAYS_ALLOWED):
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the {self.service} service is shutting down; retry on another replica")

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                self._refuse_if_draining(context, method)
                self._enter()
                try:
                    return inner_uu(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped or hidden, never leaked
                    self._fail(context, method, exc)
                finally:
                    self._exit()

            return handler._replace(unary_unary=unary_unary)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._refuse_if_draining(context, method)
                self._enter()
                try:
                    yield from inner_us(request, context)
                except Exception as exc:  # noqa: BLE001
                    self._fail(context, method, exc)
                finally:
                    self._exit()

            return handler._replace(unary_stream=unary_stream)
        return handler  # no client-streaming methods in mtserve.v1


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Without this a second server on the same port starts silently and
        # steals half the connections.
        ("grpc.so_reuseport", 0),
        # Watch streams are long-lived; allow the clients' keepalive pings.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ]


class Service:
    """A started-or-not gRPC server with health, reflection and graceful
    shutdown. `create_server` functions return one with its bound port."""

    def __init__(
        self,
        service_names: Iterable[str],
        *,
        service: str,
        max_workers: int,
        max_message_bytes: int,
        grace_seconds: float,
        max_concurrent_rpcs: int | None = None,
    ):
        self.names = list(service_names)
        self.interceptor = ErrorInterceptor(service)
        self.grace_seconds = grace_seconds
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{service}-rpc"),
            interceptors=[self.interceptor],
            options=server_options(max_message_bytes),
            # Beyond this gRPC itself answers RESOURCE_EXHAUSTED; without it,
            # calls waiting for a worker thread queue without bound.
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.set_serving(False)
        reflection.enable_server_reflection(
            [*self.names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        # A callback may return something (JobManager.start returns the manager): it is ignored.
        self._on_start: list[Callable[[], object]] = []
        self._on_drain: list[Callable[[], object]] = []
        self._on_stopped: list[Callable[[], object]] = []
        self._stopped = threading.Event()

    def bind(self, address: str) -> int:
        try:
            port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise UnavailableError(f"cannot listen on {address}: {exc}") from None
        if port == 0:
            raise UnavailableError(f"cannot listen on {address} (address in use or not local?)")
        self.port = port
        return port

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.names):
            self.health.set(name, status)

    def on_start(self, callback: Callable[[], object]) -> None:
        """Run once the server listens (start background work)."""
        self._on_start.append(callback)

    def on_drain(self, callback: Callable[[], object]) -> None:
        """Run when shutdown begins (end watch streams, stop taking work)."""
        self._on_drain.append(callback)

    def on_stopped(self, callback: Callable[[], object]) -> None:
        """Run once the server has stopped (release models, close the database)."""
        self._on_stopped.append(callback)

    def start(self) -> Service:
        self.server.start()
        for callback in self._on_start:
            callback()
        return self

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, new calls UNAVAILABLE, calls
        in flight finish within the grace period, then the server stops."""
        if self._stopped.is_set():
            return
        grace = self.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.interceptor.draining.set()
        for callback in self._on_drain:
            callback()
        if not self.interceptor.wait_idle(grace):
            log.warning("%d call(s) still running after the %.0fs grace period; cancelling them", self.interceptor.inflight, grace)
        self.server.stop(grace=0.5).wait()
        for callback in self._on_stopped:
            callback()
        self._stopped.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
