"""`python -m trainer run -f job.yaml [--resume|--restart]`: the same job
runner as `mtserve train run`, as a plain module so that launchers can start
it once per GPU:

    torchrun --nproc_per_node 4 -m trainer run -f job.yaml
    accelerate launch --multi_gpu --num_processes 4 -m trainer run -f job.yaml

Under a launcher (WORLD_SIZE > 1) every rank trains its share of each batch
(DDP); rank 0 evaluates, writes run folders and checkpoints, and prints the
progress events as JSON lines on stdout. Errors: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mtserve.errors import MtserveError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Run an mtserve training job (see docs/training.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job spec")
    run.add_argument("-f", "--file", required=True, help="the job spec (YAML)")
    run.add_argument("--resume", action="store_true", help="continue interrupted runs")
    run.add_argument("--restart", action="store_true", help="discard the state of interrupted runs")
    run.add_argument("--events", choices=["jsonl", "none"], default="jsonl", help="print progress events on stdout (rank 0)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))

    def emit(event: dict) -> None:
        if rank == 0 and args.events == "jsonl":
            print(json.dumps(event, ensure_ascii=False, default=str), flush=True)

    try:
        if args.resume and args.restart:
            raise MtserveError("give --resume or --restart, not both")
        from trainer.job import load_job
        from trainer.pipeline import run_job

        result = run_job(load_job(args.file), emit=emit, resume=args.resume, restart=args.restart)
        if rank == 0:
            print(json.dumps({"event": "result", **result.to_dict()}, ensure_ascii=False), flush=True)
        return 0
    except MtserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        _shutdown()


def _shutdown() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # pragma: no cover - best effort at exit
        pass


if __name__ == "__main__":
    sys.exit(main())
