"""Generate the Python stubs of protos/mtserve/v1/*.proto into mtserve/v1/.

    python -m services.gen_protos            # regenerate in place
    python -m services.gen_protos --out DIR  # generate into DIR/mtserve/v1 (the staleness test)

The stubs are committed, never hand-edited: tests/services/test_protos.py
regenerates them into a temporary folder and fails when they differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PACKAGE = "mtserve/v1"
INIT = '"""Generated protobuf and gRPC stubs of the mtserve.v1 API (services/gen_protos.py; do not edit)."""\n'


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / PACKAGE).glob("*.proto"))


def include_args() -> list[str]:
    """protoc include paths: our protos and the well-known types (struct.proto)
    shipped inside grpcio-tools."""
    import grpc_tools

    return [f"-I{PROTO_DIR}", f"-I{Path(grpc_tools.__file__).parent / '_proto'}"]


def generate(out: Path) -> list[Path]:
    """Run protoc (bundled with grpcio-tools) and return the files written."""
    from grpc_tools import protoc

    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        *include_args(),
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(PROTO_DIR)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see its messages above)")
    (out / PACKAGE / "__init__.py").write_text(INIT, encoding="utf-8")
    return sorted((out / PACKAGE).glob("*.py*"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
