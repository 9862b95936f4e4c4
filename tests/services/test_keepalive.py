"""A Watch stream left idle with keepalive pings stays open: the registry
allows pings every 5 s on idle streams (it used to answer the third ping
with GOAWAY too_many_pings, dropping the inference service's Watch about
every two minutes at the client's 20 s period). Here the client pings every
6 s and the stream idles for more than three periods."""

from __future__ import annotations

import threading
import time

from mtserve.config import load_settings
from mtserve_api import convert
from mtserve_api.client import Credentials, open_channel
from mtserve_api.registry import RegistryClient
from mtserve_api.v1 import registry_pb2 as rpb
from mtserve_api.v1 import registry_pb2_grpc as rpb_grpc

from .conftest import make_settings, start_registry

PING_MS = 6_000


def test_an_idle_watch_with_keepalive_pings_is_not_dropped(tmp_path, hotel):
    service, address = start_registry(make_settings(tmp_path))
    options = [
        ("grpc.keepalive_time_ms", PING_MS),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    events: list[object] = []
    ended: list[BaseException | None] = []
    try:
        with open_channel(address, options, Credentials.from_settings(load_settings())) as channel:
            stream = rpb_grpc.RegistryStub(channel).Watch(rpb.WatchRequest(client="keepalive-test"))

            def read() -> None:
                try:
                    for event in stream:
                        events.append(event)  # noqa: PERF402 - read while the test watches the list grow
                    ended.append(None)
                except Exception as exc:  # noqa: BLE001 - recorded: the assertion below shows it
                    ended.append(exc)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            deadline = time.monotonic() + 20
            while not events and time.monotonic() < deadline:
                time.sleep(0.1)
            assert events, "no snapshot on the Watch stream"
            time.sleep(3.5 * PING_MS / 1000)  # idle: only pings cross the connection
            assert not ended, f"the idle Watch stream ended: {ended}"
            with start_client(address) as client:
                client.apply_catalogue(hotel)  # a change: the open stream must carry it
            deadline = time.monotonic() + 20
            while len(events) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(events) >= 2 and not ended
            assert convert.watch_event_from_pb(events[-1])[1].tasks  # the catalogue arrived on the same stream
            stream.cancel()
    finally:
        service.stop(grace=1)


def start_client(address: str):

    return RegistryClient(address, timeout=30)
