"""The torch thread rule (mtserve/threads.py): setting, else OMP_NUM_THREADS,
else the process's cores shared among the processes that run the model."""

from __future__ import annotations

import os

import torch

from mtserve.threads import apply_torch_threads, available_cores, choose_torch_threads


def test_the_setting_wins_then_omp_num_threads_then_the_cores_divided():
    assert choose_torch_threads(3, processes=4, env={"OMP_NUM_THREADS": "2"}, cores=8).threads == 3
    assert choose_torch_threads(None, processes=4, env={"OMP_NUM_THREADS": "2"}, cores=8).threads == 2
    choice = choose_torch_threads(None, processes=4, env={}, cores=8)
    assert (choice.threads, choice.reason) == (2, "8 cores this process may use / 4 process(es) sharing them")
    assert choose_torch_threads(None, processes=3, env={}, cores=8).threads == 2  # never more threads than cores in all
    assert choose_torch_threads(None, processes=4, env={}, cores=2).threads == 1  # at least one
    assert choose_torch_threads(None, env={"OMP_NUM_THREADS": "0"}, cores=2).threads == 2  # 0 / junk: not a choice
    assert choose_torch_threads(None, env={"OMP_NUM_THREADS": "many"}, cores=2).threads == 2


def test_the_cores_are_the_process_affinity_not_the_machine():
    assert available_cores() == len(os.sched_getaffinity(0))


def test_apply_sets_torch():
    before = torch.get_num_threads()
    try:
        assert apply_torch_threads(1).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
