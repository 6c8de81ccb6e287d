"""The compute thread count follows the cores other processes leave free."""

from __future__ import annotations

import contextlib
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def spinning_processes(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Other processes keeping cores busy, as a fine-tuning job or a build would; yielded once they all run."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        for proc in procs:
            while cpu_seconds(proc.pid) < 0.1:  # started and spinning, however long the machine takes
                time.sleep(0.01)
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def busy_neighbour() -> Iterator[list[subprocess.Popen[bytes]]]:
    with spinning_processes(1) as procs:
        yield procs


@pytest.fixture
def busy_neighbours() -> Iterator[list[subprocess.Popen[bytes]]]:
    """One spinning process per core: beside our own stepping threads they still hold a whole core or more."""
    with spinning_processes(CORES) as procs:
        yield procs


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# Whatever else runs on the machine only adds to the load the governor measures beside the spinning neighbour, so
# its advice is fewer threads on any machine at any speed. The loops below count measurements, not seconds: a
# slow or loaded machine takes longer, never a different path. pytest's timeout ends a hang.


@needs_two_cores
def test_a_busy_neighbour_takes_a_thread_away(busy_neighbour: list[subprocess.Popen[bytes]]) -> None:
    governor = ThreadGovernor(max_threads=CORES, current=CORES, interval_s=0.25)
    advised = None
    while advised is None:
        time.sleep(0.26)  # this process stays idle: all the load measured is the neighbour's (and others')
        advised = governor.poll()
        assert governor.measurements <= 2, "two windows that agree are enough to advise"
    assert governor.measurements == 2  # the first window's advice waits for a second one to agree
    assert governor.others_busy_cores >= 0.7
    assert advised <= CORES - 1
    assert governor.current == advised


@needs_two_cores
def test_the_engine_steps_with_fewer_threads_beside_a_busy_neighbour(
    busy_neighbours: list[subprocess.Popen[bytes]], restore_threads: None
) -> None:
    torch.set_num_threads(CORES)
    engine = LLMEngine(tiny_loaded_model(), dataclasses.replace(tiny_engine_config(), adapt_threads=CORES))
    governor = engine.thread_governor
    assert governor is not None
    governor.interval_s = 0.25  # a quarter second holds 25 clock ticks a core: enough to read the load
    params = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)
    added = 0
    while torch.get_num_threads() == CORES:
        if not engine.has_unfinished():
            engine.add_request(f"r{added}", [5, 6, 7], params)
            added += 1
        engine.step()
        assert governor.measurements <= 2, "two windows that agree are enough to advise"
    assert governor.measurements == 2
    assert torch.get_num_threads() == governor.current <= CORES - 1
    engine.abort_request(f"r{added - 1}")
