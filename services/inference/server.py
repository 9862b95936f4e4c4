"""The inference service's gRPC server: a thin servicer over InferenceCore,
plus the registry watcher that keeps the core's state current. Health is
NOT_SERVING until the first state (from the registry, or the last-known-good
copy) has been applied, i.e. the models its routes name are loaded."""

from __future__ import annotations

import logging
from typing import Any

from mtserve.config import Settings, load_settings
from mtserve.metrics_http import metrics_endpoint
from mtserve_api import convert
from mtserve_api.v1 import inference_pb2 as ipb
from mtserve_api.v1 import inference_pb2_grpc as ipb_grpc
from services.common.server import Service, server_tls, token_store
from services.inference.core import InferenceCore, Loader
from services.inference.watcher import RegistryWatcher

log = logging.getLogger(__name__)

SERVICE_NAME = ipb.DESCRIPTOR.services_by_name["Inference"].full_name


class InferenceServicer(ipb_grpc.InferenceServicer):
    def __init__(self, core: InferenceCore):
        self.core = core

    def Classify(self, request: ipb.ClassifyRequest, context: Any) -> ipb.ClassifyResponse:
        inp = convert.input_from_pb(request.input, "input")
        answer = self.core.classify(
            request.task, inp, truncate=not request.no_truncate, timeout=context.time_remaining(), on_end=context.add_callback
        )
        return ipb.ClassifyResponse(prediction=convert.prediction_to_pb(answer))

    def ClassifyMany(self, request: ipb.ClassifyManyRequest, context: Any) -> ipb.ClassifyManyResponse:
        inp = convert.input_from_pb(request.input, "input")
        answers, skipped = self.core.classify_many(
            list(request.tasks), inp, truncate=not request.no_truncate, timeout=context.time_remaining(), on_end=context.add_callback
        )
        return ipb.ClassifyManyResponse(
            predictions=[convert.prediction_to_pb(a) for a in answers],
            skipped=[ipb.SkippedTask(task=name, reason=reason) for name, reason in skipped],
        )

    def Generate(self, request: ipb.GenerateRequest, context: Any) -> ipb.GenerateResponse:
        inp = convert.input_from_pb(request.input, "input")
        answer = self.core.classify(
            request.task, inp, truncate=not request.no_truncate, timeout=context.time_remaining(), on_end=context.add_callback, generate=True
        )
        return ipb.GenerateResponse(prediction=convert.prediction_to_pb(answer))

    def ModelInfo(self, request: ipb.ModelInfoRequest, context: Any) -> ipb.ModelInfoResponse:
        return convert.serving_info_to_pb(self.core.info())


class InferenceService(Service):
    """The server with its core (what is served) and its registry watcher."""

    core: InferenceCore
    watcher: RegistryWatcher


def create_server(
    address: str,
    settings: Settings | None = None,
    *,
    registry_address: str | None = None,
    state_file: str | None = None,
    loader: Loader | None = None,
    watch: bool = True,
) -> tuple[InferenceService, int]:
    """An inference server bound to `address` (port 0 picks a free port), not
    yet started. Starting it starts the registry watcher (unless `watch` is
    false: tests then feed states to `service.core.apply`). Returns the server
    and the bound port."""
    settings = settings or load_settings()
    core = InferenceCore.from_settings(settings, loader=loader)
    tokens = token_store(settings, "inference", address)
    service = InferenceService(
        [SERVICE_NAME],
        service="inference",
        max_workers=settings.inference.max_workers,
        max_message_bytes=settings.inference.max_message_bytes,
        grace_seconds=settings.inference.shutdown_grace_seconds,
        # No call waits for a worker thread: beyond the threads gRPC refuses
        # at once (RESOURCE_EXHAUSTED). Model calls are admitted below that
        # (inference.max_inflight_calls, in the core), so threads stay free
        # for health checks and for refusing quickly.
        max_concurrent_rpcs=settings.inference.max_workers,
        tokens=tokens,
        metrics=metrics_endpoint(settings, "inference", settings.inference.metrics_address),
        tls=server_tls(settings, "inference", address),
    )
    ipb_grpc.add_InferenceServicer_to_server(InferenceServicer(core), service.server)
    service.core = core
    core.on_applied(lambda serving: service.set_serving(True))
    watcher = RegistryWatcher(
        core,
        registry_address or settings.inference_registry_address,
        state_file if state_file is not None else settings.inference_state_file,
        initial_backoff=settings.inference.reconnect_initial_seconds,
        max_backoff=settings.inference.reconnect_max_seconds,
        name=f"inference@{address}",
        settings=settings,
    )
    service.watcher = watcher
    if watch:
        service.on_start(watcher.start)
    service.on_drain(watcher.stop)
    service.on_stopped(core.close)
    port = service.bind(address)
    return service, port
