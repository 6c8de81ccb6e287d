"""The compute thread count follows the cores other processes leave free."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch

from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.threads import ThreadGovernor, threads_for

CORES = len(os.sched_getaffinity(0))
needs_two_cores = pytest.mark.skipif(CORES < 2, reason="needs two cores to give one away")


@pytest.mark.parametrize(
    "others, allowed, max_threads, expected",
    [
        (0.0, 2, 2, 2),
        (0.5, 2, 2, 2),  # half a core busy elsewhere: still worth a thread
        (0.6, 2, 2, 1),
        (1.9, 2, 2, 1),  # never below one
        (0.0, 8, 2, 2),  # never above the maximum
        (2.7, 8, 8, 5),
    ],
)
def test_threads_for_free_cores(others: float, allowed: int, max_threads: int, expected: int) -> None:
    assert threads_for(others, allowed, max_threads) == expected


def test_bad_governor_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        ThreadGovernor(max_threads=2, current=3)
    with pytest.raises(ValueError):
        ThreadGovernor(max_threads=2, current=1, interval_s=0)


@pytest.fixture
def busy_neighbour() -> Iterator[subprocess.Popen[bytes]]:
    """Another process keeping one core busy, as a fine-tuning job or a build would."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@needs_two_cores
def test_a_busy_neighbour_takes_a_thread_away(busy_neighbour: subprocess.Popen[bytes]) -> None:
    governor = ThreadGovernor(max_threads=CORES, current=CORES, interval_s=0.25)
    advised = None
    deadline = time.monotonic() + 3.0
    while advised is None and time.monotonic() < deadline:
        time.sleep(0.05)  # this process stays idle: all the load measured is the neighbour's (and others')
        advised = governor.poll()
    assert governor.others_busy_cores >= 0.7
    assert advised is not None and advised <= CORES - 1
    assert governor.current == advised


@needs_two_cores
def test_the_engine_steps_with_fewer_threads_beside_a_busy_neighbour(
    busy_neighbour: subprocess.Popen[bytes], restore_threads: None
) -> None:
    torch.set_num_threads(CORES)
    engine = LLMEngine(tiny_loaded_model(), dataclasses.replace(tiny_engine_config(), adapt_threads=CORES))
    engine.add_request("r", [5, 6, 7], SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True))
    deadline = time.monotonic() + 5.0
    while torch.get_num_threads() == CORES and time.monotonic() < deadline:
        engine.step()
    assert torch.get_num_threads() <= CORES - 1
    engine.abort_request("r")
