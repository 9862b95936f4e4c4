"""The domain core imports neither grpc nor celery: services, trainer and
batch depend on it, never the other way round. Only the CLI (which imports
clients inside its commands) and the generated gRPC stubs may."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import mtserve


def core_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(mtserve.__path__, "mtserve."):
        if info.name.startswith("mtserve.cli") or info.name.endswith(("_grpc", "__main__")):
            continue
        names.append(info.name)
    return names


def test_core_imports_neither_grpc_nor_celery():
    modules = core_modules()
    assert "mtserve.engine" in modules and "mtserve.prompt" in modules
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'celery', 'kombu'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core modules pulled in: {out.stdout}"


def test_cli_models_command_does_not_load_grpc():
    code = (
        "import sys\n"
        "from mtserve.cli import main\n"
        "try:\n    main(['models', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'celery'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "LOADED="
