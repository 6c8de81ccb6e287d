"""The arrival workload through HTTP: new requests arriving beside running streams, as a live server sees them.

`running` streams start and, once each has its first token, decode alone for `seconds`; then new requests
arrive on the seeded schedule for `seconds` more, each a fresh real-text prompt and a short answer; then the
streams decode alone for `seconds` again. Throughput counts every generated token (running streams and
arrivals alike) whose chunk arrived in a window, over the window's length; the arrival window ends when the
last new request finishes. The pure N-stream figure is the two alone windows together: the streams' contexts
grow all through the run (~800 tokens a window), which makes every step slower, and the windows before and
after bracket the contexts of the arrival window (the window before alone overstated the pure figure by the
growth, and charged it to the arrivals). The ratio arrival / pure is what a new request costs everyone else: a
prefill chunk in a decode step, a step that leaves a fast path. A running stream that reaches the context
limit starts again on a fresh prompt (its tokens keep counting), so the N streams outlast every window however
fast the server is; they are cancelled (the connection closed) at the end."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ember.bench.arrival_schedule import ArrivalConfig
from ember.bench.http_client import HttpBenchError
from ember.bench.http_workloads import BenchClient
from ember.bench.text_prompts import TextPrompts

_RUNNING_PROMPT = 64  # tokens of each running stream's prompt


@dataclass(frozen=True)
class ArrivalResult:
    running: int
    arrivals: int
    pure_tokens_per_s: float  # the running streams alone, in the windows just before and after the arrivals
    tokens_per_s: float  # every stream's tokens while requests arrive
    ttft_ms: list[float]  # each new request's time to first token, in arrival order

    @property
    def ratio(self) -> float:
        return self.tokens_per_s / self.pure_tokens_per_s

    def ttft_percentile_ms(self, percent: float) -> float:
        """Nearest-rank percentile: with ~50 arrivals p99 is the slowest one, said as such in the table."""
        ordered = sorted(self.ttft_ms)
        rank = max(1, -(-len(ordered) * percent // 100))  # ceil(n * p / 100)
        return ordered[int(rank) - 1]


def _tokens_between(streams: list[list[float]], start: float, end: float) -> int:
    return sum(1 for times in streams for t in times if start < t <= end)


async def _arrival(
    client: BenchClient, prompt: list[int], new_tokens: int, send_at: float, times: list[float]
) -> float:
    """Sends one new request at perf_counter() `send_at`; returns its TTFT in ms."""
    await asyncio.sleep(max(0.0, send_at - time.perf_counter()))
    sent = time.perf_counter()
    await client.stream_tokens(prompt, new_tokens, times)
    return (times[0] - sent) * 1e3


def _check_running(tasks: list[asyncio.Task[None]]) -> None:
    """Raises the error of a running stream that failed."""
    for task in tasks:
        if task.done():
            task.result()


async def _keep_streaming(client: BenchClient, prompts: TextPrompts, budget: int, times: list[float]) -> None:
    """One running stream for as long as the workload lasts: a stream that used up its budget starts again, on
    a fresh prompt (as a new user would; the same one again would be a prefix-cache hit)."""
    while True:
        await client.stream_tokens(prompts.make(_RUNNING_PROMPT), budget, times)


async def _first_tokens(running: list[list[float]], tasks: list[asyncio.Task[None]]) -> None:
    while not all(running):
        _check_running(tasks)
        await asyncio.sleep(0.005)


async def arrival_workload(
    client: BenchClient, prompts: TextPrompts, cfg: ArrivalConfig, max_model_len: int
) -> ArrivalResult:
    budget = max_model_len - _RUNNING_PROMPT - 1
    running: list[list[float]] = [[] for _ in range(cfg.running)]
    tasks = [asyncio.create_task(_keep_streaming(client, prompts, budget, times)) for times in running]
    try:
        await _first_tokens(running, tasks)
        before_start = time.perf_counter()
        await asyncio.sleep(cfg.seconds)
        before_end = time.perf_counter()
        arrival_prompts = [prompts.make(cfg.prompt_tokens) for _ in cfg.offsets()]
        arrived: list[list[float]] = [[] for _ in arrival_prompts]
        ttfts = await asyncio.gather(
            *(
                _arrival(client, prompt, cfg.new_tokens, before_end + offset, times)
                for prompt, offset, times in zip(arrival_prompts, cfg.offsets(), arrived, strict=True)
            )
        )
        end = time.perf_counter()
        await asyncio.sleep(cfg.seconds)
        after_end = time.perf_counter()
        _check_running(tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    before = _tokens_between(running, before_start, before_end)
    after = _tokens_between(running, end, after_end)
    if before == 0 or after == 0:
        raise HttpBenchError(
            f"no token arrived in a {cfg.seconds} s pure-decode window (one step took longer): "
            "lengthen --arrival-seconds"
        )
    pure = (before + after) / ((before_end - before_start) + (after_end - end))
    during = _tokens_between(running + arrived, before_end, end) / (end - before_end)
    return ArrivalResult(cfg.running, len(arrived), pure, during, list(ttfts))
