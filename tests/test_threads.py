"""Thread housekeeping that decides which waiting regime OpenMP uses (threads.release_openmp_team)."""

from __future__ import annotations

import os
import time

import torch

from ember.threads import release_openmp_team


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_releasing_the_openmp_team_ends_its_idle_threads_and_torch_keeps_working() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.ones(1 << 22)
        assert (x + 1).sum().item() == 2 * (1 << 22)  # a parallel region: this thread now leads a team of 2
        with_team = os_threads()
        assert release_openmp_team()
        deadline = time.monotonic() + 10
        while os_threads() >= with_team and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os_threads() < with_team  # the idle worker is gone, not parked
        assert (x + 1).sum().item() == 2 * (1 << 22)  # and the next parallel op builds a new team
    finally:
        torch.set_num_threads(threads)
