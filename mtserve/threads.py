"""Torch's CPU thread count, chosen on purpose for each process that runs the
model (the inference service, each pool process of a local-scorer batch
worker), instead of torch's default.

Torch's default is one intra-op thread per core it counts on the machine,
whatever the process may use: inside a container pinned to a few cores, or
with several worker processes on one machine, every process then runs more
threads than it has cores and they preempt each other mid-matmul. The rule:
the `torch_threads` setting when given; else OMP_NUM_THREADS when set (what
torch itself would obey, so an operator's choice stays theirs); else the cores
this process may run on (its CPU affinity, which container cpusets and
`taskset` set) divided by the processes that share them, at least one."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str


def available_cores() -> int:
    """The CPUs this process may run on (not the machine's: a cpuset or taskset narrows them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_torch_threads(setting: int | None, *, processes: int = 1, env: Mapping[str, str] | None = None,
                         cores: int | None = None) -> ThreadChoice:
    env = os.environ if env is None else env
    if setting is not None:
        return ThreadChoice(setting, "the torch_threads setting")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    cores = available_cores() if cores is None else cores
    processes = max(1, processes)
    return ThreadChoice(max(1, cores // processes), f"{cores} cores this process may use / {processes} process(es) sharing them")


def apply_torch_threads(setting: int | None, *, processes: int = 1, who: str = "this process") -> ThreadChoice:
    """Set torch's intra-op threads by the rule above, and log the choice and why."""
    import torch

    choice = choose_torch_threads(setting, processes=processes)
    torch.set_num_threads(choice.threads)
    log.info("%s: %d torch thread(s) (%s)", who, choice.threads, choice.reason)
    return choice
