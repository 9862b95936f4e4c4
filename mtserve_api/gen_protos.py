"""Generate the Python stubs of protos/mtserve/v1/*.proto into mtserve_api/v1/.

    python -m mtserve_api.gen_protos            # regenerate in place
    python -m mtserve_api.gen_protos --out DIR  # generate into DIR/mtserve_api/v1 (the staleness test)

The proto package stays `mtserve.v1` (the names on the wire); only the Python
module path is `mtserve_api.v1`, the API floor between the core and the
services. protoc derives Python imports from the .proto file path, so the
stubs are generated under `mtserve/v1` in a scratch folder and their
`from mtserve.v1 import` lines are rewritten on the way in (the approach of
protoletariat, in one regex: generated imports of our own package are the
only lines of that form).

The stubs are committed, never hand-edited: tests/services/test_protos.py
regenerates them into a temporary folder and fails when they differ.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PROTO_PACKAGE = "mtserve/v1"
PACKAGE = "mtserve_api/v1"
INIT = '"""Generated protobuf and gRPC stubs of the mtserve.v1 API (mtserve_api/gen_protos.py; do not edit)."""\n'
OWN_IMPORT = re.compile(r"^from mtserve\.v1 import ", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / PROTO_PACKAGE).glob("*.proto"))


def include_args() -> list[str]:
    """protoc include paths: our protos and the well-known types (struct.proto)
    shipped inside grpcio-tools."""
    import grpc_tools

    return [f"-I{PROTO_DIR}", f"-I{Path(grpc_tools.__file__).parent / '_proto'}"]


def generate(out: Path) -> list[Path]:
    """Run protoc (bundled with grpcio-tools) and return the files written
    under out/mtserve_api/v1."""
    from grpc_tools import protoc

    target = out / PACKAGE
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "grpc_tools.protoc",
            *include_args(),
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *[str(p.relative_to(PROTO_DIR)) for p in proto_files()],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed (see its messages above)")
        for generated in sorted((Path(scratch) / PROTO_PACKAGE).glob("*.py*")):
            text = OWN_IMPORT.sub("from mtserve_api.v1 import ", generated.read_text(encoding="utf-8"))
            (target / generated.name).write_text(text, encoding="utf-8")
    (target / "__init__.py").write_text(INIT, encoding="utf-8")
    return sorted(target.glob("*.py*"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
