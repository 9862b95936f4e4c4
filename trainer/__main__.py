"""`python -m trainer run -f job.yaml [--resume|--restart] [--promote]`: the
same job runner as `mtserve train run`, as a plain module so that launchers
can start it once per GPU, and the trainer service once per job:

    torchrun --nproc_per_node 4 -m trainer run -f job.yaml
    accelerate launch --multi_gpu --num_processes 4 -m trainer run -f job.yaml

Under a launcher (WORLD_SIZE > 1) every rank trains its share of each batch
(DDP); rank 0 evaluates, writes run folders and checkpoints, and prints the
progress events as JSON lines on stdout, the last one `{"event": "result",
...}`. Errors: one line on stderr, exit 2.

With `--promote` (or `promote: true` in the spec) or `--register`, rank 0
checks that the registry answers before training and, when the job ends,
registers its checkpoints and (promote) routes the qualified tasks
(trainer/promote.py); the `promotion` event and the result say what moved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from mtserve.errors import MtserveError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Run an mtserve training job (see docs/training.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job spec")
    run.add_argument("-f", "--file", required=True, help="the job spec (YAML)")
    run.add_argument("--base-dir", help="the folder relative paths of the spec start from (default: the spec file's folder)")
    run.add_argument("--resume", action="store_true", help="continue interrupted runs")
    run.add_argument("--restart", action="store_true", help="discard the state of interrupted runs")
    run.add_argument("--promote", action="store_true", help="at the end, register the checkpoints and route the qualified tasks")
    run.add_argument("--register", action="store_true", help="at the end, register the checkpoints (routes unchanged)")
    run.add_argument("--registry", help="registry HOST:PORT (default: settings registry.address)")
    run.add_argument("--root", help="refuse a job whose folders lie outside this one (the trainer service passes its root)")
    run.add_argument("--checkpoints-root", help="with --root: a base model must be an id or inside this folder")
    run.add_argument("--events", choices=["jsonl", "none"], default="jsonl", help="print progress events on stdout (rank 0)")
    run.add_argument(
        "--exit-with-parent", type=int, metavar="PID",
        help="(the trainer service) end when the process PID that started this one ends, even if it is killed (Linux)",
    )
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        _exit_with_parent(args.exit_with_parent)
    rank = int(os.environ.get("RANK", "0"))

    def emit(event: Mapping[str, Any]) -> None:
        if rank == 0 and args.events == "jsonl":
            print(json.dumps(event, ensure_ascii=False, default=str), flush=True)

    try:
        if args.resume and args.restart:
            raise MtserveError("give --resume or --restart, not both")
        from pathlib import Path

        from mtserve.files import load_yaml
        from trainer.job import confine, load_job, parse_job
        from trainer.pipeline import run_job

        if args.base_dir:
            spec = parse_job(load_yaml(args.file, "job"), base_dir=args.base_dir, source=os.path.basename(args.file))
        else:
            spec = load_job(args.file)
        if args.root:
            confine(spec, Path(args.root), Path(args.checkpoints_root or args.root))
        promote = args.promote or spec.promote
        registry = address = None
        if (promote or args.register) and rank == 0:
            from mtserve.config import load_settings
            from trainer.promote import connect_registry

            address = args.registry or load_settings().registry.address
            registry, event = connect_registry(spec, address, promote=promote)
            emit(event)
        try:
            result = run_job(spec, emit=emit, resume=args.resume, restart=args.restart)
            out = result.to_dict()
            if registry is not None:
                from trainer.promote import finish_job

                assert address is not None  # set together with registry
                report = finish_job(result, registry, promote=promote, address=address, emit=emit,
                                    result_file=spec.runs_path / f"job-{spec.name}.result.json")
                out["promotion"] = report.to_dict()
        finally:
            if registry is not None:
                registry.close()
        if rank == 0:
            print(json.dumps({"event": "result", **out}, ensure_ascii=False), flush=True)
        return 0
    except MtserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        _shutdown()


def _exit_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when the thread that started it
    ends (the trainer service's launcher thread), however the service dies,
    so that a job never trains on unobserved. A parent already gone: exit."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the service's restart check still finds it
        pass
    if os.getppid() != parent:
        print(f"error: the process that started this job (pid {parent}) is gone", file=sys.stderr)
        sys.exit(3)


def _shutdown() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001,S110 - best effort at exit  # pragma: no cover
        pass


if __name__ == "__main__":
    sys.exit(main())
