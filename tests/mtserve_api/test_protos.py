"""The proto files and their generated stubs: stubs are never stale, every
rpc, message, field and enum value carries a `///` comment, and the
protobuf modules import protobuf only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mtserve_api.gen_protos import PACKAGE, PROTO_DIR, ROOT, generate, include_args, proto_files


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path):
    generated = generate(tmp_path)
    assert {p.name for p in generated} >= {"common_pb2.py", "registry_pb2_grpc.py", "inference_pb2.pyi", "__init__.py"}
    committed_dir = ROOT / PACKAGE
    committed = {p.name for p in committed_dir.glob("*.py*")}
    fresh = {p.name for p in generated}
    assert committed == fresh, f"stub files differ: run `python -m mtserve_api.gen_protos` ({sorted(committed ^ fresh)})"
    for path in generated:
        assert (committed_dir / path.name).read_text() == path.read_text(), (
            f"mtserve_api/v1/{path.name} is stale: run `python -m mtserve_api.gen_protos` and commit the result"
        )


def _descriptor_set(tmp_path: Path):
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    args = ["protoc", *include_args(), "--include_source_info", f"--descriptor_set_out={out}"]
    assert protoc.main(args + [str(p.relative_to(PROTO_DIR)) for p in proto_files()]) == 0
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    return fds


def test_every_rpc_message_field_and_enum_value_has_a_triple_slash_comment(tmp_path: Path):
    # Source-info paths: 4 = message_type, 2 = field, 5 = enum_type, 2 = value,
    # 6 = service, 2 = method, 8 = oneof_decl, 3 = nested_type.
    missing = []
    for file in _descriptor_set(tmp_path).file:
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}

        def check(path: tuple[int, ...], what: str, comments: dict = comments, file: object = file) -> None:
            text = comments.get(path, "")
            # a `///` comment reaches the descriptor as a leading "/"
            if not text.strip().startswith("/") or len(text.strip()) < 5:
                missing.append(f"{file.name}: {what}")

        for i, msg in enumerate(file.message_type):
            check((4, i), f"message {msg.name}")
            for j, fld in enumerate(msg.field):
                check((4, i, 2, j), f"field {msg.name}.{fld.name}")
            for j, oneof in enumerate(msg.oneof_decl):
                if not oneof.name.startswith("_"):  # proto3 `optional` makes synthetic oneofs
                    check((4, i, 8, j), f"oneof {msg.name}.{oneof.name}")
        for i, enum in enumerate(file.enum_type):
            check((5, i), f"enum {enum.name}")
            for j, value in enumerate(enum.value):
                check((5, i, 2, j), f"enum value {value.name}")
        for i, service in enumerate(file.service):
            check((6, i), f"service {service.name}")
            for j, method in enumerate(service.method):
                check((6, i, 2, j), f"rpc {service.name}.{method.name}")
    assert not missing, "missing `///` comments:\n" + "\n".join(missing)


def test_protobuf_modules_import_protobuf_only():
    code = (
        "import sys\n"
        "import mtserve_api.v1.common_pb2, mtserve_api.v1.registry_pb2, mtserve_api.v1.inference_pb2\n"
        "import mtserve_api.convert, mtserve.records\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'torch', 'transformers'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_plain_python_layers_import_no_grpc():
    """Only servers, the interceptor and clients import grpc; the store, the
    batcher, the inference core and the conversions are plain Python."""
    plain = [
        "mtserve.records", "mtserve_api.convert", "services.registry.store", "services.registry.watch",
        "services.inference.batcher", "services.inference.core", "services.inference.state", "services.inference.watcher",
    ]
    code = (
        "import sys\n"
        f"for m in {plain!r}: __import__(m)\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
