"""Idle streams cannot take a server's unary calls down: each open stream
holds a worker thread, so streams are bounded below the threads
(`registry.max_streams`); one beyond the bound is refused with
RESOURCE_EXHAUSTED and the unary calls keep their threads. Without the
bound, as many idle Watch streams as worker threads left GetRoutes with
DEADLINE_EXCEEDED."""

from __future__ import annotations

import threading

import grpc
import pytest

from mtserve_api.client import connect
from mtserve_api.v1 import registry_pb2 as rpb
from mtserve_api.v1 import registry_pb2_grpc as rpb_grpc

from .conftest import make_settings, start_registry, wait_for

WORKERS, STREAMS = 4, 2


def test_more_idle_watch_streams_than_workers_leave_unary_calls_answering(tmp_path):
    service, address = start_registry(make_settings(tmp_path, **{"registry.max_workers": WORKERS, "registry.max_streams": STREAMS}))
    outcomes: list[object] = []  # the first event of each stream, or its error
    lock = threading.Lock()
    channel = connect(address)
    stub = rpb_grpc.RegistryStub(channel)
    streams = [stub.Watch(rpb.WatchRequest(client=f"idle-{i}")) for i in range(WORKERS + 2)]

    def first(stream: grpc.Call) -> None:
        try:
            item: object = next(iter(stream))
        except grpc.RpcError as exc:
            item = exc
        with lock:
            outcomes.append(item)

    readers = [threading.Thread(target=first, args=(s,), daemon=True) for s in streams]
    try:
        for r in readers:
            r.start()
        wait_for(lambda: len(outcomes) == len(streams), "every stream to open or be refused")
        refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
        assert len(refused) == len(streams) - STREAMS
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert refused[0].details() == (
            "the registry service has 2 streams open, its limit (registry.max_streams); retry with backoff"
        )
        # The open streams idle on their worker threads; unary calls still answer.
        for _ in range(WORKERS * 2):
            assert stub.GetRoutes(rpb.GetRoutesRequest(), timeout=10) is not None
        # A closed stream gives its slot back.
        for s in streams:
            s.cancel()
        wait_for(lambda: service.interceptor.inflight == 0, "the cancelled streams to end")
        again = stub.Watch(rpb.WatchRequest(client="again"))
        assert next(iter(again)) is not None
        again.cancel()
    finally:
        channel.close()
        service.stop(grace=1)


def test_streams_must_leave_threads_for_unary_calls(tmp_path):
    from mtserve.errors import ValidationError

    with pytest.raises(ValidationError, match="max_streams"):
        make_settings(tmp_path, **{"registry.max_workers": 4, "registry.max_streams": 4})
