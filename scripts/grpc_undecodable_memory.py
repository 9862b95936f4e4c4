"""Reproducer: does a gRPC Python server's memory grow with requests whose
body does not decode? (issue 14: ~17 KB per request, never returned.)

    .venv/bin/python scripts/grpc_undecodable_memory.py [N] [--safe]

Starts a server in a child process (a bare `grpc.server` with one unary
method whose request deserializer is a protobuf message's FromString), sends N requests whose bytes are not a valid
message, then N valid ones, and prints the server's resident memory after
each phase. With --safe the deserializer returns a marker for such a body
and the handler refuses it with INVALID_ARGUMENT (what mtserve's servers do).
Only grpcio and protobuf: fit for an upstream report.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent import futures
from typing import Any


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def serve(port_queue: multiprocessing.Queue, safe: bool) -> None:
    import grpc
    from google.protobuf import message, wrappers_pb2

    undecodable = object()  # not None: grpc treats a None request as a failed deserialization

    def echo(request: Any, context: grpc.ServicerContext) -> wrappers_pb2.StringValue:
        if request is undecodable:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request body is not a valid StringValue")
        if request.value == "refuse":  # a valid request that the handler refuses
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused")
        return request

    def decode_or_mark(data: bytes) -> Any:
        try:
            return wrappers_pb2.StringValue.FromString(data)
        except message.DecodeError:
            return undecodable

    decode = decode_or_mark if safe else wrappers_pb2.StringValue.FromString
    handler = grpc.method_handlers_generic_handler("t.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=decode, response_serializer=wrappers_pb2.StringValue.SerializeToString)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port_queue.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination()


def main() -> int:
    import grpc

    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 20_000
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no grpc state inherited
    q = spawn.Queue()
    safe = "--safe" in sys.argv  # the deserializer returns None instead of raising; the handler refuses
    proc = spawn.Process(target=serve, args=(q, safe), daemon=True)
    proc.start()
    port = q.get(timeout=30)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/t.Echo/Echo", request_serializer=None, response_deserializer=None)
    bad, good = b"\xff\xff\xff\xff", b"\x0a\x02hi"  # an invalid varint tag; a StringValue "hi"
    refused = b"\x0a\x06refuse"  # valid, refused by the handler with INVALID_ARGUMENT
    call(good, timeout=10)
    time.sleep(0.5)
    print(f"grpcio {grpc.__version__}{' --safe' if safe else ''}: start {rss_mb(proc.pid):.0f} MB")
    for label, body in (("valid", good), ("refused (valid, aborted)", refused), ("undecodable", bad), ("valid", good)):
        for _ in range(n):
            try:
                call(body, timeout=10)
            except grpc.RpcError:
                pass
        time.sleep(1.0)
        print(f"after {n} {label} requests: {rss_mb(proc.pid):.0f} MB")
    proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
