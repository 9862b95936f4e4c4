"""What every mtserve gRPC server shares: the interceptor, health and
reflection, explicit message sizes, and graceful shutdown.

The interceptor is the one place where callers are checked and domain errors
(mtserve.errors) become status codes; servicers just raise. Every call but
health must carry a bearer token whose role the RPC allows
(mtserve_api/roles.py): no token or an unknown one is UNAUTHENTICATED, a role
too low PERMISSION_DENIED. The caller's token name is available to the
servicer (`current_caller`, for audit records). The interceptor also counts
calls in flight, so that shutdown can wait for them, and refuses new calls
with UNAVAILABLE once draining has begun.
"""

from __future__ import annotations

import contextvars
import importlib.metadata
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mtserve.auth import TokenStore
from mtserve.config import Settings, is_loopback
from mtserve.errors import (
    IntegrityError,
    MtserveError,
    NotFoundError,
    OverloadedError,
    PreconditionError,
    UnavailableError,
    ValidationError,
)
from mtserve.metrics_http import MetricsEndpoint, MetricsServer
from mtserve.tls import ServerPems
from mtserve_api.roles import ROLE_OF, allows, is_public
from services.common.health import HealthServicer
from services.common.logs import REQUEST_ID_KEY, VERSION_KEY, current_request_id, loggable, request_id_from, set_request_id
from services.common.metrics import REFUSED, RPC_IN_FLIGHT, RPC_REQUESTS, RPC_SECONDS

log = logging.getLogger(__name__)

try:
    SERVER_VERSION = importlib.metadata.version("mtserve")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was not installed
    SERVER_VERSION = "unknown"

# The token name of the call being served ("" with auth off): servicers read
# it for audit records. Set by the interceptor in the thread that runs the call.
_caller: contextvars.ContextVar[str] = contextvars.ContextVar("mtserve_caller", default="")


def current_caller() -> str:
    return _caller.get()

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

# grpc.health.v1 Watch, which clients balancing over replicas keep open on
# every replica (client-side health checking, mtserve_api/client.py). The
# health servicer answers it without holding a worker thread
# (experimental_non_blocking), but only while its handler is the servicer's
# own: wrapped by an interceptor it becomes an ordinary stream that holds a
# thread for as long as the client is connected, counts as a call in flight
# (so a graceful stop waited the whole grace period for it) and against
# registry.max_streams. So the interceptors leave it a non-blocking handler
# (the error interceptor only refuses an undecodable body); it is public (no
# token) and must answer while draining anyway.
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


def status_of(exc: MtserveError) -> grpc.StatusCode | None:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return None


# Status codes after which the request's task name is a known one.
_TASK_KNOWN = {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
               grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL}


def _short_method(method: str) -> str:
    return method.rsplit("/", 1)[-1]


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every call (streams: counted when they end)."""

    def __init__(self, service: str):
        self.service = service

    def _record(self, method: str, request: Any, context: grpc.ServicerContext, started: float) -> None:
        code = context.code() or grpc.StatusCode.OK
        # code() is a StatusCode once set; abort() set it before raising.
        code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
        task = getattr(request, "task", "") if code in _TASK_KNOWN else "-"
        task = task if isinstance(task, str) else "-"
        name = _short_method(method)
        RPC_REQUESTS.labels(self.service, name, task, code.name).inc()
        RPC_SECONDS.labels(self.service, name, task).observe(time.monotonic() - started)

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method == HEALTH_WATCH:
            return handler
        method = details.method
        in_flight = RPC_IN_FLIGHT.labels(self.service)
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                started = time.monotonic()
                in_flight.inc()
                try:
                    return inner_uu(request, context)
                finally:
                    in_flight.dec()
                    self._record(method, request, context, started)

            return handler._replace(unary_unary=unary_unary)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started = time.monotonic()
                in_flight.inc()
                try:
                    yield from inner_us(request, context)
                finally:
                    in_flight.dec()
                    self._record(method, request, context, started)

            return handler._replace(unary_stream=unary_stream)
        return handler


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps domain errors to status codes, hides everything else behind
    INTERNAL (logged with an id the caller can quote), tracks calls in
    flight, and refuses new calls with UNAVAILABLE while draining."""

    def __init__(self, service: str, tokens: TokenStore | None = None, max_streams: int | None = None):
        self.service = service
        self.tokens = tokens  # None: auth is off (an explicit setting, loopback only)
        # A server-streaming call holds its worker thread for as long as the
        # stream is open; bounding them below the pool keeps threads for the
        # unary calls (idle Watch streams once took a registry down).
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams) if max_streams else None
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
            ref = current_request_id()  # the call's one id: the caller quotes it, the log lines carry it
            log.error("%s %s failed (error id %s)", self.service, method, ref, exc_info=exc)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method} (error id {ref}; details are in the server log)")
        log.info("%s %s -> %s: %s", self.service, method, code.name, loggable(exc))  # type: ignore[union-attr]
        context.abort(code, str(exc))

    @staticmethod
    def _start_request(details: grpc.HandlerCallDetails, context: grpc.ServicerContext) -> None:
        """The call's request id (the caller's or a new one): on every log
        line of the call, and back to the caller in the trailing metadata.
        Trailing, not initial: response headers commit a call, and a client
        no longer retries a committed call, so headers sent at the start
        would end the retry of UNAVAILABLE (a draining replica) that rolling
        restarts rely on."""
        request_id = request_id_from(details.invocation_metadata)
        set_request_id(request_id)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id), (VERSION_KEY, SERVER_VERSION)))

    def _refuse_if_draining(self, context: grpc.ServicerContext, method: str) -> None:
        if self.draining.is_set() and not method.startswith(_ALWAYS_ALLOWED):
            REFUSED.labels(self.service, "draining").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the {self.service} service is shutting down; retry on another replica")

    def _identify(self, details: grpc.HandlerCallDetails) -> tuple[str, tuple[grpc.StatusCode, str] | None]:
        """(caller name, refusal or None). The refusal of a missing or unknown
        token says only that: nothing that helps a guesser."""
        method = details.method
        if self.tokens is None or is_public(method):
            return "", None
        secret = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                secret = value[len("Bearer "):].strip()
        token = self.tokens.authenticate(secret) if secret else None
        if token is None:
            return "", (grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
        if not allows(method, token.role):
            need = ROLE_OF.get(method)
            why = f"needs the {need.label} role" if need else "is not open to any role"
            log.warning("%s: %s (role %s) refused %s", self.service, token.name, token.role.label, method)
            return token.name, (grpc.StatusCode.PERMISSION_DENIED, f"{method} {why}; token {token.name!r} has role {token.role.label}")
        return token.name, None

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if (handler.unary_unary or handler.unary_stream) is not None and handler.request_deserializer is not None:
            handler = handler._replace(request_deserializer=_marking_undecodable(handler.request_deserializer))
        if method == HEALTH_WATCH:
            return _non_blocking_health_watch(handler)
        caller, refusal = self._identify(details)
        if refusal is not None:
            return _refusing(handler, *refusal)
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                _caller.set(caller)
                self._start_request(details, context)
                _refuse_if_undecodable(request, context, method)
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
                _caller.set(caller)
                self._start_request(details, context)
                _refuse_if_undecodable(request, context, method)
                self._refuse_if_draining(context, method)
                streams = self._streams
                if streams is not None and not streams.acquire(blocking=False):
                    REFUSED.labels(self.service, "streams").inc()
                    log.warning("%s: %s refused: %d streams open (the limit)", self.service, method, self.max_streams)
                    context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the {self.service} service has {self.max_streams} streams open, its limit ({self.service}.max_streams); retry with backoff",
                    )
                self._enter()
                try:
                    yield from inner_us(request, context)
                except Exception as exc:  # noqa: BLE001
                    self._fail(context, method, exc)
                finally:
                    self._exit()
                    if streams is not None:
                        streams.release()

            return handler._replace(unary_stream=unary_stream)
        return handler  # no client-streaming methods in mtserve.v1 (reflection's is checked above)


class _Undecodable:
    """The request of a call whose body did not decode (see _marking_undecodable)."""


UNDECODABLE = _Undecodable()


def _marking_undecodable(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that returns UNDECODABLE instead of raising.
    When a deserializer raises (or returns None), grpcio answers INTERNAL
    "Exception deserializing request!" and keeps about 16 KB per such call
    for the life of the process (grpcio 1.70 and 1.85;
    scripts/grpc_undecodable_memory.py reproduces it with a bare server);
    refused by the interceptor instead, the call is an ordinary
    INVALID_ARGUMENT that frees what it used."""

    def deserialize_or_mark(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 - any decoding failure is the caller's bad body
            return UNDECODABLE

    return deserialize_or_mark


def _refuse_if_undecodable(request: Any, context: grpc.ServicerContext, method: str) -> None:
    if request is UNDECODABLE:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: the body is not a valid request message of {method}")


def _non_blocking_health_watch(handler: Any) -> Any:
    """The health servicer's Watch handler, still non-blocking (HEALTH_WATCH),
    refusing an undecodable body like every other call."""
    inner = handler.unary_stream

    def watch(request: Any, context: grpc.ServicerContext, send_response_callback: Any = None) -> Any:
        _refuse_if_undecodable(request, context, HEALTH_WATCH)
        return inner(request, context, send_response_callback)

    # grpcio reads this attribute of the behaviour to pass it send_response_callback instead of running it on a thread.
    setattr(watch, "experimental_non_blocking", getattr(inner, "experimental_non_blocking", False))  # noqa: B010
    return handler._replace(unary_stream=watch)


def _refusing(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same kind as `handler` that refuses the call."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    kinds = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "stream_stream": grpc.stream_stream_rpc_method_handler,
    }
    for kind, make in kinds.items():
        if getattr(handler, kind) is not None:
            return make(refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    return None


def server_tls(settings: Settings, service: str, address: str) -> ServerPems | None:
    """The certificate a server presents (the local CA's by default); None
    when TLS is off, which is refused on a non-loopback address and announced."""
    if not settings.tls.enabled:
        if not is_loopback(address):
            raise PreconditionError(f"tls.enabled is false: the {service} service may then listen on a loopback address only, not {address}")
        log.warning("%s: TLS IS OFF (tls.enabled=false): calls and tokens travel in plaintext", service)
        return None
    return settings.server_tls()


def token_store(settings: Settings, service: str, address: str) -> TokenStore | None:
    """The tokens a server checks, with the local admin token made on first
    start; None when auth is off, which is refused on a non-loopback address
    and announced."""
    if not settings.auth.enabled:
        if not is_loopback(address):
            raise PreconditionError(f"auth.enabled is false: the {service} service may then listen on a loopback address only, not {address}")
        log.warning("%s: AUTH IS OFF (auth.enabled=false): every caller on this machine may call every RPC", service)
        return None
    return settings.server_token_store()


def _refuse_if_in_use(address: str) -> None:
    """UnavailableError when something already listens on a numeric
    HOST:PORT. gRPC would find out too, but only after printing its C-core
    log line to stderr; SO_REUSEADDR lets a port in TIME_WAIT pass, as gRPC does."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return  # a name: gRPC resolves it
    if not port.isdigit() or int(port) == 0:
        return
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise UnavailableError(f"cannot listen on {address}: {exc.strerror or exc}") from None


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Without this a second server on the same port starts silently and
        # steals half the connections.
        ("grpc.so_reuseport", 0),
        # Watch streams are long-lived; allow the clients' keepalive pings (every
        # 20 s, mtserve_api/client.py) on idle streams. This is the server-side
        # argument; without it the server allows one ping per 5 minutes and
        # answers a client's third early ping with GOAWAY too_many_pings.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
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
        max_streams: int | None = None,
        tokens: TokenStore | None = None,
        tls: ServerPems | None = None,
        metrics: MetricsEndpoint | None = None,
    ):
        """`tokens`: the token store calls are checked against (`token_store`);
        None serves without auth. `tls`: the certificate to present
        (`server_tls`); None serves plaintext. `max_streams`: server-streaming
        calls open at once (None: unbounded, for servers without streams).
        `metrics`: where to serve Prometheus metrics (`metrics_endpoint`; None: not at all)."""
        self.names = list(service_names)
        self.tls = tls
        self.interceptor = ErrorInterceptor(service, tokens, max_streams)
        self.grace_seconds = grace_seconds
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{service}-rpc"),
            # Metrics outermost: they see the status the error interceptor set.
            interceptors=[MetricsInterceptor(service), self.interceptor],
            options=server_options(max_message_bytes),
            # Beyond this gRPC itself answers RESOURCE_EXHAUSTED at once;
            # without it, calls waiting for a worker thread queue without bound.
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        self.health = HealthServicer()  # non-blocking Watch (services/common/health.py says why not grpc_health's)
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
        self.metrics = metrics
        self.metrics_server: MetricsServer | None = None

    def bind(self, address: str) -> int:
        _refuse_if_in_use(address)
        try:
            if self.tls is None:
                port = self.server.add_insecure_port(address)
            else:
                t = self.tls
                credentials = grpc.ssl_server_credentials(
                    [(t.private_key, t.cert_chain)], root_certificates=t.client_ca, require_client_auth=t.client_ca is not None
                )
                port = self.server.add_secure_port(address, credentials)
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
        if self.metrics is not None:
            self.metrics_server = MetricsServer(self.metrics).start()
            m = self.metrics_server
            log.info("%s: metrics on %s://%s:%d/metrics", self.interceptor.service, m.scheme, self.metrics.address.rpartition(":")[0], m.port)
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
        if self.metrics_server is not None:
            self.metrics_server.stop()
        for callback in self._on_stopped:
            callback()
        self._stopped.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
