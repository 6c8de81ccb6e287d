"""How many compute threads to use: the cores nothing else is busy on.

A compute thread on a core that another process is using slows a decode step about 5x on the measured
machines, so the default is the count of idle cores, measured over a short window from /proc/stat."""

from __future__ import annotations

import os
import threading
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


def threads_for(others_busy_cores: float, allowed: int, max_threads: int) -> int:
    """Compute threads to run when other processes keep `others_busy_cores` cores busy (fractions count from
    0.6 of a core: a thread sharing a core that busy loses more at every barrier than it adds)."""
    taken = int(max(0.0, others_busy_cores) + 0.4)
    return max(1, min(max_threads, allowed - taken))


class ThreadGovernor:
    """Keeps the compute thread count at the cores other processes leave free, re-measured while serving.

    The count chosen at start-up goes stale when a fine-tuning job, a build or another server starts next to us;
    one OpenMP thread on a shared core then stalls every barrier of a step (steps measured 3-10x slower here).
    `poll` is called once per engine step and reads /proc/stat at most once per `interval_s`: other processes'
    load is all cores' busy time minus this process's own CPU time. A new count is advised only after two
    intervals in a row agree, so one noisy second does not flip it."""

    def __init__(self, max_threads: int, current: int, interval_s: float = 1.0) -> None:
        if max_threads < 1 or not 1 <= current <= max_threads or interval_s <= 0:
            raise ValueError(
                f"need 1 <= current <= max_threads and interval_s > 0, got {current}, {max_threads}, {interval_s}"
            )
        self.max_threads = max_threads
        self.interval_s = interval_s
        self.allowed = os.sched_getaffinity(0)
        self.current = current
        self.others_busy_cores = 0.0  # the last measurement
        self.measurements = 0  # windows measured so far (each poll that read /proc/stat)
        self._last = self._sample()
        self._pending: int | None = None

    def _sample(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy core-seconds of our cores, this process's CPU seconds), None without /proc/stat."""
        try:
            times = _cpu_times()
        except OSError:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = sum(total - idle for name, (idle, total) in times.items() if int(name[3:]) in self.allowed)
        return time.monotonic(), busy / tick, time.process_time()

    def poll(self) -> int | None:
        """The thread count to switch to now, or None to keep the current one."""
        if self._last is None or time.monotonic() - self._last[0] < self.interval_s:
            return None
        now = self._sample()
        if now is None:
            return None
        wall, busy, own = (b - a for a, b in zip(self._last, now, strict=True))
        self._last = now
        self.measurements += 1
        self.others_busy_cores = max(0.0, (busy - own) / wall) if wall > 0 else 0.0
        advised = threads_for(self.others_busy_cores, len(self.allowed), self.max_threads)
        if advised == self.current:
            self._pending = None
            return None
        if advised != self._pending:
            self._pending = advised
            return None
        self._pending = None
        self.current = advised
        return advised


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


def release_openmp_team() -> bool:
    """Ends the calling thread's idle OpenMP worker threads (OpenMP 5's omp_pause_resource_all, soft pause).

    libgomp's threads wait at barriers by spinning (300k rounds) only while it manages no more threads than there
    are cores; beyond that they sleep almost at once and every parallel region pays a futex wake-up. `ember serve`
    loads the model on the main thread, whose team then sat idle beside the engine thread's and tipped the count:
    on idle cores, 8-stream decode ran ~500 tok/s instead of ~580 (with a parallel region per op, before the
    fused decode step, 2-2.6x slower). Call it from a thread that is done with torch (a later parallel op there
    builds a new team). False when the process has no libgomp or it lacks the call (another OpenMP runtime)."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]), None)
    except OSError:
        return False
    if path is None:
        return False
    pause_all = getattr(
        ctypes.CDLL(path), "omp_pause_resource_all", None
    )  # the loaded library, not a new one
    if pause_all is None:
        return False
    omp_pause_soft = 1
    return pause_all(omp_pause_soft) == 0


class StepGate:
    """One engine step at a time across the engines of one process, handed over in arrival order.

    Two engines stepping at once run two OpenMP teams on the same cores: each barrier then waits for a thread the
    other team has preempted. Taking turns, each step has every core. A plain Lock is not enough: the engine that
    releases it takes it again before the waiting one wakes (measured 72 vs 18 tok/s); tickets keep it fair."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> StepGate:
        with self._turn:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._turn.wait_for(lambda: self._serving == ticket)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._turn:
            self._serving += 1
            self._turn.notify_all()
