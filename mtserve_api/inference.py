"""An inference client taking and returning domain objects. Every call has a
deadline; UNAVAILABLE is retried by the channel's service config (scoring is
idempotent), on the next replica when the target names several. A failed call raises a RemoteError that is also the matching
domain error.

    with InferenceClient("127.0.0.1:50052", timeout=10) as inference:
        answers = inference.classify_many(conversation)          # every task of its channel
        answer = inference.classify("ec", Text("...", Channel.EMAIL))
        answer.prediction.label, answer.checkpoint_id, answer.timing.queue_ms
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtserve.inputs import Input
from mtserve.predictions import Answer
from mtserve.records import ServingInfo
from mtserve_api import convert
from mtserve_api.client import DEFAULT_MAX_MESSAGE_BYTES, ServiceClient
from mtserve_api.v1 import inference_pb2 as ipb
from mtserve_api.v1 import inference_pb2_grpc as ipb_grpc

if TYPE_CHECKING:
    from mtserve.config import Settings

SERVICE = "mtserve.v1.Inference"


class InferenceClient(ServiceClient):
    """`address`: one replica (HOST:PORT) or several (`dns:///NAME:PORT`,
    `ipv4:H:P,H:P`; docs/services.md, "Replicas"), balanced round robin over
    those whose health says SERVING."""

    SERVICE, NAME = SERVICE, "inference"
    RETRY = ("Classify", "ClassifyMany", "Generate", "ModelInfo")  # scoring changes nothing: all idempotent
    HEALTH_CHECK = True  # a replica loading its models or draining gets no calls

    def __init__(
        self, address: str, *, timeout: float = 60.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, token: str | None = None,
        settings: Settings | None = None,
    ):
        super().__init__(address, timeout=timeout, max_message_bytes=max_message_bytes, token=token, settings=settings)
        self.stub = ipb_grpc.InferenceStub(self.channel)

    def classify(self, task: str, inp: Input, *, truncate: bool = True, timeout: float | None = None) -> Answer:
        request = ipb.ClassifyRequest(task=task, input=convert.input_to_pb(inp), no_truncate=not truncate)
        return convert.prediction_from_pb(self._call(self.stub.Classify, request, timeout).prediction)

    def classify_many(
        self, inp: Input, tasks: Sequence[str] = (), *, truncate: bool = True, timeout: float | None = None
    ) -> tuple[list[Answer], list[tuple[str, str]]]:
        """Answers for the named tasks (or every applicable classification
        task), and the applicable tasks skipped with their reason."""
        request = ipb.ClassifyManyRequest(input=convert.input_to_pb(inp), tasks=list(tasks), no_truncate=not truncate)
        response = self._call(self.stub.ClassifyMany, request, timeout)
        return [convert.prediction_from_pb(p) for p in response.predictions], [(s.task, s.reason) for s in response.skipped]

    def generate(self, task: str, inp: Input, *, truncate: bool = True, timeout: float | None = None) -> Answer:
        request = ipb.GenerateRequest(task=task, input=convert.input_to_pb(inp), no_truncate=not truncate)
        return convert.prediction_from_pb(self._call(self.stub.Generate, request, timeout).prediction)

    def model_info(self, *, timeout: float | None = None) -> ServingInfo:
        return convert.serving_info_from_pb(self._call(self.stub.ModelInfo, ipb.ModelInfoRequest(), timeout))
