"""Prometheus metrics of the services, and the HTTP endpoint that serves them.

Every metric is defined here, once, on prometheus_client's default registry
(which also carries the process collector: resident memory, CPU seconds, open
files). The metrics interceptor (beside the error interceptor) counts every
call by service, RPC, task and status code and times it; the inference core
and batcher add what only they see: labels served per task and checkpoint
(drift between days shows there), batch sizes, queue depth, refusals, model
load time and size.

Label values stay bounded: a task label is taken from the request only when
the call got past validation and lookup (unknown names from a caller would
otherwise mint a series each), and reads "-" otherwise.

The endpoint (`<service>.metrics_address`, loopback by default) follows the
gRPC services' security: TLS with the same certificate when tls.enabled, and
a bearer token of role operator or above when auth.enabled. Prometheus's own
scrape config has both (`authorization: {credentials_file: ...}`, `tls_config:
{ca_file: ...}`).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

from mtserve.auth import Role, TokenStore
from mtserve.errors import UnavailableError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RPC_REQUESTS = Counter("mtserve_rpc_requests", "Calls by service, RPC, task and status code.", ["service", "method", "task", "code"])
RPC_SECONDS = Histogram("mtserve_rpc_seconds", "Call latency in seconds by service, RPC and task.", ["service", "method", "task"],
                        buckets=LATENCY_BUCKETS)
RPC_IN_FLIGHT = Gauge("mtserve_rpc_in_flight", "Calls being served.", ["service"])
REFUSED = Counter("mtserve_refused_calls", "Calls refused before any work, by reason.", ["service", "reason"])
LABELS_SERVED = Counter("mtserve_labels_served", "Answers served by task, checkpoint and label.", ["task", "checkpoint", "label"])
BATCH_REQUESTS = Histogram("mtserve_batch_requests", "Requests per forward batch, by checkpoint.", ["checkpoint"],
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_SECONDS = Histogram("mtserve_batch_seconds", "Compute time of one batch, by checkpoint.", ["checkpoint"], buckets=LATENCY_BUCKETS)
QUEUE_DEPTH = Gauge("mtserve_batch_queue_depth", "Requests waiting for their batch, by checkpoint.", ["checkpoint"])
MODEL_LOAD_SECONDS = Gauge("mtserve_model_load_seconds", "Time the last load of a checkpoint took.", ["checkpoint"])
MODEL_BYTES = Gauge("mtserve_model_bytes", "Bytes of a loaded checkpoint's parameters.", ["checkpoint"])

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
        if handler is None:
            return None
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


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where and how a service serves /metrics: None token store = no token
    required; None cert = plain HTTP."""

    address: str
    tokens: TokenStore | None
    cert_files: tuple[Path, Path] | None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return  # one line per scrape on stderr is noise; failures are answered with their status


def _guarded(app: Any, tokens: TokenStore | None) -> Any:
    """The metrics app behind a bearer-token check (operator or above)."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        if tokens is not None:
            header = environ.get("HTTP_AUTHORIZATION", "")
            token = tokens.authenticate(header[len("Bearer "):].strip()) if header.startswith("Bearer ") else None
            if token is None or token.role < Role.OPERATOR:
                status = "401 Unauthorized" if token is None else "403 Forbidden"
                body = b"missing or unknown bearer token\n" if token is None else b"metrics need the operator role\n"
                start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
                return [body]
        return app(environ, start_response)

    return guarded


class MetricsServer:
    """The /metrics HTTP endpoint of one service, in a daemon thread."""

    def __init__(self, endpoint: MetricsEndpoint):
        host, _, port = endpoint.address.rpartition(":")
        try:
            self.httpd = make_server(host.strip("[]"), int(port), _guarded(make_wsgi_app(), endpoint.tokens),
                                     _ThreadingServer, handler_class=_QuietHandler)
        except OSError as exc:
            raise UnavailableError(f"cannot serve metrics on {endpoint.address}: {exc.strerror or exc}") from None
        if endpoint.cert_files is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(endpoint.cert_files[0]), str(endpoint.cert_files[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_port
        self.scheme = "https" if endpoint.cert_files else "http"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


__all__ = [
    "BATCH_REQUESTS", "BATCH_SECONDS", "LABELS_SERVED", "MODEL_BYTES", "MODEL_LOAD_SECONDS", "QUEUE_DEPTH", "REFUSED", "RPC_IN_FLIGHT",
    "RPC_REQUESTS", "RPC_SECONDS", "MetricsEndpoint", "MetricsInterceptor", "MetricsServer",
]
