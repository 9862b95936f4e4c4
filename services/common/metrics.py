"""Prometheus metrics of the gRPC services (served by mtserve/metrics_http.py).

Every metric is defined here, once, on prometheus_client's default registry
(which also carries the process collector: resident memory, CPU seconds, open
files); no gRPC here, so the plain-Python core and batcher can count too. The
metrics interceptor (services/common/server.py, beside the error interceptor) counts every
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

from prometheus_client import Counter, Gauge, Histogram

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

__all__ = [
    "BATCH_REQUESTS", "BATCH_SECONDS", "LABELS_SERVED", "MODEL_BYTES", "MODEL_LOAD_SECONDS", "QUEUE_DEPTH", "REFUSED", "RPC_IN_FLIGHT",
    "RPC_REQUESTS", "RPC_SECONDS",
]
