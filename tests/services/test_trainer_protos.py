"""trainer.proto and its stubs: the staleness check (test_protos.py compares
every generated file) includes the trainer's, the package is mtserve.v1, and
the trainer's conversions and job core import no grpc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.gen_protos import PACKAGE, PROTO_DIR, ROOT, generate, proto_files

TRAINER_STUBS = {"trainer_pb2.py", "trainer_pb2.pyi", "trainer_pb2_grpc.py"}


def test_trainer_stubs_are_generated_committed_and_fresh(tmp_path: Path):
    assert PROTO_DIR / PACKAGE / "trainer.proto" in proto_files()
    generated = {p.name: p for p in generate(tmp_path)}
    assert TRAINER_STUBS <= set(generated)
    for name in sorted(TRAINER_STUBS):
        committed = ROOT / PACKAGE / name
        assert committed.exists(), f"mtserve/v1/{name} is missing: run `python -m services.gen_protos`"
        assert committed.read_text() == generated[name].read_text(), f"mtserve/v1/{name} is stale: run `python -m services.gen_protos`"


def test_trainer_proto_is_in_the_versioned_package():
    text = (PROTO_DIR / PACKAGE / "trainer.proto").read_text()
    assert "package mtserve.v1;" in text and 'syntax = "proto3";' in text and "service Trainer {" in text
    from mtserve.v1 import trainer_pb2

    assert trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name == "mtserve.v1.Trainer"
    assert set(trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].methods_by_name) == {
        "StartJob", "GetJob", "ListJobs", "CancelJob", "ResumeJob", "WatchJob"}


def test_the_trainer_core_and_conversions_import_no_grpc_nor_torch():
    code = (
        "import sys\n"
        "import services.trainer.jobs, services.trainer.manager, services.trainer.convert, trainer.promote\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'torch'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
