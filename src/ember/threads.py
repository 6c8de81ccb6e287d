"""How many compute threads to use: the cores nothing else is busy on.

A compute thread on a core that another process is using slows a decode step about 5x on the measured
machines, so the default is the count of idle cores, measured over a short window from /proc/stat."""

from __future__ import annotations

import os
import time


def _cpu_times() -> dict[str, tuple[int, int]]:
    """cpu name -> (idle jiffies incl. iowait, total jiffies)."""
    times: dict[str, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *fields = line.split()
            values = [int(v) for v in fields]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            times[name] = (idle, sum(values))
    return times


def count_free_cores(window_s: float = 0.25, busy_threshold: float = 0.5) -> int:
    """Cores of our affinity set that were idle at least half of a short window; at least 1."""
    allowed = len(os.sched_getaffinity(0))
    try:
        before = _cpu_times()
        time.sleep(window_s)
        after = _cpu_times()
    except OSError:
        return max(1, allowed)
    busy = 0
    for name, (idle1, total1) in after.items():
        idle0, total0 = before.get(name, (idle1, total1))
        elapsed = total1 - total0
        if elapsed > 0 and (elapsed - (idle1 - idle0)) / elapsed > busy_threshold:
            busy += 1
    return max(1, min(allowed, len(after) - busy))


def configure_torch_threads(requested: int | None) -> int:
    """Sets torch's intra-op pool (which our kernels share) and returns the count used."""
    import torch

    threads = requested if requested and requested > 0 else count_free_cores()
    torch.set_num_threads(threads)
    tune_allocator()
    return threads


def tune_allocator() -> None:
    """Keep large freed buffers in the heap instead of returning them to the kernel after every step.

    glibc hands allocations above 128 KiB back with munmap; the next step's same-sized temporaries then page-fault
    on every 4 KiB page (measured here: ~8 us each, ~50 ms per layer of batched decode attention)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)
