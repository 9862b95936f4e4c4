"""Prometheus metrics of the gRPC services (served by mtserve/metrics_http.py).

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
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

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


__all__ = [
    "BATCH_REQUESTS", "BATCH_SECONDS", "LABELS_SERVED", "MODEL_BYTES", "MODEL_LOAD_SECONDS", "QUEUE_DEPTH", "REFUSED", "RPC_IN_FLIGHT",
    "RPC_REQUESTS", "RPC_SECONDS", "MetricsInterceptor",
]
