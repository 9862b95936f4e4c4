"""The Python client snippets of the README and docs/services.md, run as
written against live services (only the address is changed to the test's):
they carry a token, and they print what the services answer."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def snippet(path: Path) -> str:
    """The first ```python block of `path` that calls the inference service."""
    for block in re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL):
        if "InferenceStub" in block:
            return "\n".join(line.removeprefix("  ") for line in block.splitlines())  # README indents it
    raise AssertionError(f"no inference snippet in {path}")


@pytest.mark.parametrize("doc", ["README.md", "docs/services.md"])
def test_the_client_snippet_runs_as_written(served, hotel, doc):
    code = snippet(ROOT / doc)
    assert "127.0.0.1:50052" in code and "authorization" in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace("127.0.0.1:50052", served.inference_address), doc, "exec"), {})  # noqa: S102 - the documented snippet, as written
    printed = out.getvalue()
    assert printed.strip(), printed
    if doc == "README.md":
        assert printed.split()[0] in {label.name for label in hotel.task("ec").labels}
    else:
        assert "idm ->" in printed and "tiny-llama" in printed  # every IM task answered, then one
        assert "INVALID_ARGUMENT - " in printed  # and the error a bad request gets
