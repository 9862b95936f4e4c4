"""The floors of the tree, and that every import runs down them.

    CLI (mtserve_cli)                 imports anything below; nothing imports it
    services/  trainer/  batch/       servers, pipeline, Celery app
    API floor (mtserve_api)           generated stubs, clients, pb <-> domain conversion
    core (mtserve)                    domain types, renderer, engine, checkpoints, config

Read from the code itself (every `import` statement, at module level or
inside a function), not from what one run happens to load. One sideways arrow
is allowed on the middle floor: the trainer's service (services/trainer)
drives the trainer's job specs. `mtserve.v1` is the deprecated alias of the
stubs: it names `mtserve_api.v1` as a string, loaded only when an old client
asks for a stub (tested below), so it holds no import statement.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"mtserve": 0, "mtserve_api": 1, "services": 2, "trainer": 2, "batch": 2, "mtserve_cli": 3}
SIDEWAYS = {("services", "trainer")}


def modules() -> dict[str, Path]:
    found = {}
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(module, line) for every import statement of the file, resolved to the
    project module it loads (`from pkg import submodule` loads the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            out += [(s, node.lineno) for s in subs] if len(subs) == len(node.names) else [(base, node.lineno)]
    return out


def edges() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        for target, _ in imported(path, name, known):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph.setdefault(name, set()).add(target)
    return graph


def test_every_import_runs_down_the_floors():
    known = modules()
    assert {"mtserve.engine", "mtserve.records", "mtserve_api.v1.inference_pb2", "mtserve_cli.root"} <= set(known)
    wrong = []
    for name, path in known.items():
        here = name.split(".")[0]
        for target, line in imported(path, name, known):
            there = target.split(".")[0]
            if there not in FLOORS or there == here or (here, there) in SIDEWAYS:
                continue
            if FLOORS[there] >= FLOORS[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {target}")
    assert not wrong, "imports that do not run down:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def core_modules() -> list[str]:
    return sorted(name for name in modules() if name.split(".")[0] == "mtserve")


def test_importing_the_whole_core_loads_nothing_above_it_nor_grpc_or_celery():
    code = (
        "import sys\n"
        f"for m in {core_modules()!r}: __import__(m)\n"
        "above = ('mtserve_api', 'mtserve_cli', 'services', 'trainer', 'batch', 'grpc', 'celery', 'kombu')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in above)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"core modules pulled in: {out.stdout}"


def test_the_deprecated_mtserve_v1_alias_still_serves_old_clients():
    code = (
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "import mtserve.v1\n"
        "try:\n    from mtserve.v1 import inference_pb2\nexcept DeprecationWarning as w:\n    print('warned:', w)\n"
        "warnings.simplefilter('ignore')\n"
        "from mtserve.v1 import inference_pb2, inference_pb2_grpc\n"
        "import mtserve_api.v1.inference_pb2 as new\n"
        "print(inference_pb2 is new, hasattr(inference_pb2_grpc, 'InferenceStub'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.splitlines() == ["warned: mtserve.v1 is deprecated: import inference_pb2 from mtserve_api.v1", "True True"]


def test_cli_models_command_does_not_load_grpc():
    code = (
        "import sys\n"
        "from mtserve_cli import main\n"
        "try:\n    main(['models', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'celery'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "LOADED="
