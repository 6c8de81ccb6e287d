"""The workloads that run through HTTP only (long contexts, arrivals) on one server, ember's or llama-server's.

Each server gets its own TextPrompts with the same seed, so both see the very same token ids."""

from __future__ import annotations

from dataclasses import dataclass

from ember.bench.arrival_schedule import ArrivalConfig
from ember.bench.arrivals import ArrivalResult
from ember.bench.bench_args import context_label
from ember.bench.http_workloads import HttpBench
from ember.bench.long_context import LongContextResult
from ember.bench.text_prompts import TextPrompts


@dataclass(frozen=True)
class LongWorkloads:
    contexts: tuple[int, ...]  # tokens at the end of each long request (prompt + new tokens)
    new_tokens: int  # generated after each long prompt; its decode speed is the row
    arrival: ArrivalConfig | None
    max_model_len: int  # the servers' longest sequence: the running streams' token budget


@dataclass
class LongFigures:
    long_context: dict[int, LongContextResult]
    arrival: ArrivalResult | None


def measure_long_and_arrivals(
    http: HttpBench, prompts: TextPrompts, work: LongWorkloads, server_name: str
) -> LongFigures:
    long_context = {}
    for context in work.contexts:
        result = http.long_context(prompts, context, work.new_tokens)
        print(
            f"{server_name}: {context_label(context)} context: TTFT {result.ttft_ms / 1e3:.1f} s, "
            f"then {result.decode_tokens_per_s:.1f} tok/s",
            flush=True,
        )
        long_context[context] = result
    arrival = None
    if work.arrival is not None:
        arrival = http.arrivals(prompts, work.arrival, work.max_model_len)
        print(
            f"{server_name}: arrivals: {arrival.tokens_per_s:.1f} tok/s vs {arrival.pure_tokens_per_s:.1f} "
            f"pure ({arrival.ratio:.0%}), TTFT p50 {arrival.ttft_percentile_ms(50):.0f} ms",
            flush=True,
        )
    return LongFigures(long_context, arrival)
