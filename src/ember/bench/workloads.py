"""The engine-side benchmark workloads, each timed on a real LLMEngine with the real model."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams


@dataclass
class DecodeResult:
    streams: int
    tokens_per_s: float
    step_ms: float  # median wall time of one decode step
    overhead_ms: float  # median time of a step spent outside the model forward + sampling


@dataclass
class TtftResult:
    cold_ms: float
    cached_ms: float


class PromptMaker:
    """Random token prompts: distinct per call so no run hits another's prefix cache by accident."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.high = min(vocab_size, 40000)

    def make(self, length: int) -> list[int]:
        return [self.rng.randrange(100, self.high) for _ in range(length)]


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def _run_until_done(engine: LLMEngine) -> None:
    while engine.has_unfinished():
        engine.step()


def prefill_tokens_per_s(engine: LLMEngine, prompts: PromptMaker, length: int, repeats: int) -> float:
    rates = []
    for i in range(repeats):
        engine.add_request(f"prefill-{length}-{i}", prompts.make(length), _greedy(1))
        start = time.perf_counter()
        _run_until_done(engine)
        rates.append(length / (time.perf_counter() - start))
    return statistics.median(rates)


def decode_throughput(engine: LLMEngine, prompts: PromptMaker, streams: int, new_tokens: int) -> DecodeResult:
    """Aggregate tokens/s over steps where every stream decodes (their prefills are done before timing)."""
    ids = [f"decode-{streams}-{i}" for i in range(streams)]
    for rid in ids:
        engine.add_request(rid, prompts.make(32), _greedy(new_tokens + 1))
    while any(engine.sequences[rid].sequence.num_output_tokens == 0 for rid in ids):
        engine.step()
    engine.timer.step_times.clear()
    engine.timer.overhead_times.clear()
    generated = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        generated += sum(len(o.outputs[0].delta_token_ids) for o in engine.step())
    elapsed = time.perf_counter() - start
    return DecodeResult(
        streams=streams,
        tokens_per_s=generated / elapsed,
        step_ms=statistics.median(engine.timer.step_times) * 1e3,
        overhead_ms=statistics.median(engine.timer.overhead_times) * 1e3,
    )


def time_to_first_token(engine: LLMEngine, prompt: list[int], request_id: str) -> float:
    engine.add_request(request_id, prompt, _greedy(1))
    start = time.perf_counter()
    _run_until_done(engine)
    return (time.perf_counter() - start) * 1e3


def ttft_cold_and_cached(engine: LLMEngine, prompts: PromptMaker, length: int) -> TtftResult:
    """TTFT of a fresh `length`-token prompt, then of the same prefix followed by a new question."""
    prefix = prompts.make(length)
    cold = time_to_first_token(engine, prefix + prompts.make(16), "ttft-cold")
    cached = time_to_first_token(engine, prefix + prompts.make(16), "ttft-cached")
    return TtftResult(cold_ms=cold, cached_ms=cached)
