"""Deprecated alias of `mtserve_api.v1`, kept for clients written before the
stubs left the core (0.1). The generated stubs live in the API floor,
`mtserve_api.v1`; import them from there. This package imports nothing when
it is imported: `from mtserve.v1 import inference_pb2` loads
`mtserve_api.v1.inference_pb2` on first access, with a DeprecationWarning.
It is the core's one reference above itself, by name and on demand only, and
goes away with the next minor release.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

STUBS = frozenset(
    f"{proto}_{kind}"
    for proto in ("common", "inference", "registry", "trainer")
    for kind in ("pb2", "pb2_grpc")
)


def __getattr__(name: str) -> ModuleType:
    if name not in STUBS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"mtserve.v1 is deprecated: import {name} from mtserve_api.v1", DeprecationWarning, stacklevel=2)
    module = importlib.import_module(f"mtserve_api.v1.{name}")
    sys.modules[f"{__name__}.{name}"] = module  # a later `import mtserve.v1.<name>` finds it
    return module
