"""grpc.health.v1 for every mtserve server: the reference servicer's
behaviour (grpc_health.v1.health.HealthServicer: Check, a non-blocking
Watch, enter_graceful_shutdown) without its deadlock.

Why not the reference servicer: its non-blocking Watch sends each update
while holding the servicer's lock, and a send waits until gRPC's server
thread has completed it; that same server thread runs the close callback
of a Watch that ends, which takes the lock. A Watch closing while a status
changes (a client disconnecting while the server drains, as in every
rolling restart) stopped the server for good (seen here with grpcio-health-
checking 1.85). Here the statuses and watchers have a lock that is never
held while sending, and a second lock only orders the sends (the server
thread never takes it), so each watcher still sees the updates in order.

Why non-blocking matters: clients that balance over replicas keep one Watch
open per replica (client-side health checking, mtserve_api/client.py); a
blocking Watch would hold a worker thread for each of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

Send = Callable[[Any], None]  # gRPC's send_response_callback: a response, or None to end the stream


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._state = threading.Lock()  # statuses and watchers; never held while sending
        self._send = threading.Lock()  # one sender at a time: each watcher sees changes in order
        self._status: dict[str, int] = {"": SERVING}
        self._watchers: dict[str, set[Send]] = {}
        self._frozen = False

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        with self._state:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext, send: Send | None = None) -> Any:
        """Non-blocking (grpcio passes `send` because of the attribute set
        below): the current status now, every change later, until the
        client goes away. An unknown service is SERVICE_UNKNOWN, not an
        error, as gRFC A17 asks."""
        if send is None:  # never, while the attribute below is set; kept honest rather than silently blocking
            raise RuntimeError("HealthServicer.Watch must be served non-blocking")
        service = request.service
        with self._send:
            with self._state:
                status = self._status.get(service, SERVICE_UNKNOWN)
                self._watchers.setdefault(service, set()).add(send)
            send(health_pb2.HealthCheckResponse(status=status))
        if not context.add_callback(lambda: self._closed(service, send)):
            self._closed(service, send)  # the call had ended already: no callback will come
        return None

    # grpcio reads these attributes of the behaviour: call it with a send callback instead of running it on a worker thread.
    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]
    Watch.experimental_thread_pool = None  # type: ignore[attr-defined]

    def _closed(self, service: str, send: Send) -> None:
        # Runs on gRPC's server thread: only the state lock, held briefly, never the send lock.
        with self._state:
            self._watchers.get(service, set()).discard(send)
        send(None)

    def set(self, service: str, status: int) -> None:
        """Set a service's status ("" is the whole server) and tell its watchers; ignored after enter_graceful_shutdown."""
        with self._send:
            with self._state:
                if self._frozen:
                    return
                self._status[service] = status
                watchers = list(self._watchers.get(service, ()))
            for send in watchers:
                send(health_pb2.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good (later `set` calls are ignored)."""
        with self._send:
            with self._state:
                if self._frozen:
                    return
                self._frozen = True
                for service in self._status:
                    self._status[service] = NOT_SERVING
                watchers = [(send, NOT_SERVING) for service in self._status for send in self._watchers.get(service, ())]
            for send, status in watchers:
                send(health_pb2.HealthCheckResponse(status=status))
