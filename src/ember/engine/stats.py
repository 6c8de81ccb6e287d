"""Counters the engine keeps for /metrics, the start-up log and the benchmark's overhead column."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from ember.engine.forward_path import ForwardPath
from ember.engine.scheduler_output import SchedulerOutput, SchedulerStats


@dataclass
class EngineStats:
    """A snapshot-able set of counters; the async engine copies it after each step."""

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens found cached
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    num_preemptions: int = 0
    num_steps: int = 0
    num_fused_steps: int = 0  # steps the native fused decode step ran (ForwardPath.FUSED)
    num_module_steps: int = 0  # steps DecoderModel.forward ran, module by module (ForwardPath.MODULES)
    # steps that ran both: the fused step's sequences natively, long-context prefill chunks on the modules
    num_split_steps: int = 0
    # speculative decoding, vLLM's spec_decode_* counters: drafts verified, their tokens, the tokens kept, and
    # the tokens kept at each draft position (index 0: the first drafted token)
    spec_decode_num_drafts: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0
    spec_decode_accepted_per_pos: tuple[int, ...] = ()  # replaced, never mutated: snapshots copy shallowly

    def record_draft(self, num_drafted: int, num_accepted: int, num_extra_tokens: int) -> None:
        """One verified draft; num_extra_tokens: tokens it added beyond the one a plain decode yields."""
        self.spec_decode_num_drafts += 1
        self.spec_decode_num_draft_tokens += num_drafted
        self.spec_decode_num_accepted_tokens += num_accepted
        per_pos = list(self.spec_decode_accepted_per_pos)
        per_pos.extend([0] * (num_drafted - len(per_pos)))
        for position in range(num_accepted):
            per_pos[position] += 1
        self.spec_decode_accepted_per_pos = tuple(per_pos)
        self.generation_tokens_total += num_extra_tokens

    def record_step(
        self, sched: SchedulerOutput, stats: SchedulerStats, forward_path: ForwardPath | None
    ) -> None:
        """Counts one step and the forward that ran it, and copies the scheduler's view after the step."""
        self.num_steps += 1
        if forward_path is ForwardPath.FUSED:
            self.num_fused_steps += 1
        elif forward_path is ForwardPath.MODULES:
            self.num_module_steps += 1
        elif forward_path is ForwardPath.SPLIT:
            self.num_split_steps += 1
        self.generation_tokens_total += sum(1 for item in sched.scheduled if item.sample)
        self.num_preemptions = stats.num_preemptions
        self.num_running = stats.num_running
        self.num_waiting = stats.num_waiting
        self.kv_usage = stats.kv_usage
        self.prefix_cache_queries = stats.prefix_cache_queries
        self.prefix_cache_hits = stats.prefix_cache_hits
        self.prompt_tokens_total = stats.prompt_tokens_total


@dataclass
class StepTimer:
    """Splits each step's wall time into the model forward+sample and everything around it."""

    step_times: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    overhead_times: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    _t0: float = 0.0
    _f0: float = 0.0
    _f1: float = 0.0

    def begin(self) -> None:
        self._t0 = time.perf_counter()

    def cancel(self) -> None:
        self._t0 = 0.0

    def mark_forward_start(self) -> None:
        self._f0 = time.perf_counter()

    def mark_forward_end(self) -> None:
        self._f1 = time.perf_counter()

    def end(self) -> None:
        total = time.perf_counter() - self._t0
        self.step_times.append(total)
        self.overhead_times.append(total - (self._f1 - self._f0))
