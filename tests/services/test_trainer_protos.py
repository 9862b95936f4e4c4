"""trainer.proto's service (its stubs' staleness is test_protos.py's check of
every generated file), and the trainer's conversions, job core, store and
train-worker side (runner, Celery app and task) import no grpc nor torch: a
train worker's parent process loads neither, and its training process is
where torch lives."""

from __future__ import annotations

import subprocess
import sys

from mtserve_api.gen_protos import ROOT


def test_the_trainer_service_has_its_six_rpcs_in_the_versioned_package():
    from mtserve_api.v1 import trainer_pb2

    service = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"]
    assert service.full_name == "mtserve.v1.Trainer"
    assert set(service.methods_by_name) == {"StartJob", "GetJob", "ListJobs", "CancelJob", "ResumeJob", "WatchJob"}


def test_the_trainer_core_and_conversions_import_no_grpc_nor_torch():
    code = (
        "import sys\n"
        "import services.trainer.records, services.trainer.store, services.trainer.service, services.trainer.runner\n"
        "import services.trainer.celery_app, services.trainer.tasks, services.trainer.convert, trainer.promote\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'torch'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
