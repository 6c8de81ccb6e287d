"""ember's own figures: each engine-only workload, followed at once by the same one through HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from ember.bench.gemm_only import gemm_only_tokens_per_s
from ember.bench.http_workloads import HttpBench, HttpDecodeResult
from ember.bench.workloads import (
    DecodeResult,
    PromptMaker,
    TtftResult,
    decode_throughput,
    prefill_tokens_per_s,
    ttft_cold_and_cached,
)
from ember.engine.llm_engine import LLMEngine


@dataclass(frozen=True)
class Workloads:
    """What ember's rows run; the lengths are the table's ("prefill 512", "TTFT 1k prompt")."""

    streams: tuple[int, ...]
    new_tokens: int
    prefill_length: int = 512
    ttft_length: int = 1024


@dataclass
class HttpFigures:
    prefill_tokens_per_s: float
    decode: dict[int, HttpDecodeResult]
    ttft: TtftResult


@dataclass
class EmberFigures:
    prefill_tokens_per_s: float
    decode: dict[int, DecodeResult]
    gemm_only_tokens_per_s: dict[int, float]
    ttft: TtftResult
    http: HttpFigures | None  # None when run without the server


def measure_ember(
    engine: LLMEngine, prompts: PromptMaker, work: Workloads, http: HttpBench | None
) -> EmberFigures:
    """Every workload on the engine, each followed right away by the same one through HTTP (when `http` is
    given), so the load of a shared machine weighs on the two alike."""
    prefill_tokens_per_s(engine, prompts, 64, 1)  # warm-up
    if http is not None:
        http.prefill_tokens_per_s(64, 1)
    prefill = prefill_tokens_per_s(engine, prompts, work.prefill_length, 3)
    http_prefill = http.prefill_tokens_per_s(work.prefill_length, 3) if http is not None else 0.0
    decode: dict[int, DecodeResult] = {}
    http_decode: dict[int, HttpDecodeResult] = {}
    for s in work.streams:
        decode[s] = decode_throughput(engine, prompts, s, work.new_tokens)
        if http is not None:
            http_decode[s] = http.decode_throughput(s, work.new_tokens)
    gemm = {s: gemm_only_tokens_per_s(engine.model.network, s) for s in work.streams}
    ttft = ttft_cold_and_cached(engine, prompts, work.ttft_length)
    http_figures = None
    if http is not None:
        http_figures = HttpFigures(http_prefill, http_decode, http.ttft_cold_and_cached(work.ttft_length))
    return EmberFigures(prefill, decode, gemm, ttft, http_figures)


def measure_http_only(http: HttpBench, work: Workloads) -> HttpFigures:
    """The HTTP half of measure_ember alone, for a peer server: the same calls in the same order, so a fresh
    HttpBench sends the very same token ids ember's server got."""
    http.prefill_tokens_per_s(64, 1)  # warm-up
    prefill = http.prefill_tokens_per_s(work.prefill_length, 3)
    decode = {s: http.decode_throughput(s, work.new_tokens) for s in work.streams}
    return HttpFigures(prefill, decode, http.ttft_cold_and_cached(work.ttft_length))
