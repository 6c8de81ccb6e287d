"""The benchmark workloads again, through a running server's OpenAI-compatible API with real HTTP.

Each function mirrors its engine-only twin in workloads.py: the same prompts (same PromptMaker seed), the same
max_tokens and greedy ignore_eos sampling, and the same clock boundaries, so HTTP/engine is the cost of the
server path alone. The client is one asyncio event loop with a minimal HTTP client (http_client.py); per SSE
event it reads the clock once and looks at bytes, no JSON (its CPU share is reported: on a small machine it
competes with the engine)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ember.bench.http_client import HttpBenchError, HttpClient
from ember.bench.workloads import PromptMaker, TtftResult

if TYPE_CHECKING:
    from ember.bench.arrival_schedule import ArrivalConfig
    from ember.bench.arrivals import ArrivalResult
    from ember.bench.long_context import LongContextResult
    from ember.bench.text_prompts import TextPrompts


@dataclass
class HttpDecodeResult:
    streams: int
    tokens_per_s: float
    new_tokens_per_stream: list[int]  # tokens each stream received after its first one
    client_cpu_share: float  # CPU seconds of this (client) process per wall second of the phase


class BenchClient:
    """The /v1 routes of one server, with the greedy ignore_eos requests every workload sends."""

    def __init__(self, url: str, api_key: str) -> None:
        self.http = HttpClient(f"{url}/v1", api_key)

    @staticmethod
    def _body(prompt: list[int], max_tokens: int, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
        body |= {"ignore_eos": True, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}  # the server's own count, to check ours
        return body

    async def complete(self, prompt: list[int], max_tokens: int) -> dict[str, Any]:
        return await self.http.post("/completions", self._body(prompt, max_tokens, stream=False))

    async def token_arrival_times(self, prompt: list[int], max_tokens: int) -> list[float]:
        """perf_counter() at the arrival of each generated token of one streamed completion."""
        times: list[float] = []
        await self.stream_tokens(prompt, max_tokens, times)
        return times

    async def stream_tokens(self, prompt: list[int], max_tokens: int, times: list[float]) -> None:
        """Streams one completion, appending perf_counter() to `times` as each generated token arrives (so a
        caller that cancels a long stream keeps what arrived until then)."""
        usage: dict[str, Any] | None = None
        received = len(times)
        events = self.http.post_events("/completions", self._body(prompt, max_tokens, stream=True))
        async with aclosing(events):
            # Only bytes are looked at per token; both servers write compact JSON. The usage event is ember's
            # `"choices":[]` chunk, or llama-server's last chunk (finish_reason, empty text and usage).
            async for arrived, event in events:
                if event == b"data: [DONE]":
                    break
                if event.startswith(b'data: {"error"'):
                    raise HttpBenchError(f"the stream failed: {event[6:].decode()}")
                if b'"usage":{' in event:
                    final = json.loads(event[6:])
                    usage = final["usage"]
                    if any(choice.get("text") for choice in final["choices"]):
                        raise HttpBenchError(
                            "the usage chunk carries text: tokens cannot be counted per chunk"
                        )
                elif event.startswith(b"data: "):
                    times.append(arrived)
        # With ignore_eos and no stop strings the server sends one chunk per engine step, one token each;
        # the usage chunk confirms it, so counting chunks counts tokens.
        if usage is None or usage["completion_tokens"] != len(times) - received:
            raise HttpBenchError(
                f"received {len(times) - received} token chunks but the server reports usage {usage}: "
                "chunks no longer carry one token each, so this benchmark cannot count tokens"
            )


async def prefill_tokens_per_s(client: BenchClient, prompts: PromptMaker, length: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        prompt = prompts.make(length)
        start = time.perf_counter()
        await client.complete(prompt, 1)
        rates.append(length / (time.perf_counter() - start))
    return statistics.median(rates)


async def decode_throughput(
    client: BenchClient, prompts: PromptMaker, streams: int, new_tokens: int
) -> HttpDecodeResult:
    """Aggregate tokens/s of `streams` concurrent streamed completions, clocked as the engine-only row is.

    The engine-only row starts its clock once every stream has its first token (all prefills done) and stops
    it when the last stream finishes, counting every token in between. The same boundaries here: start at
    the arrival of the last stream's first token, stop at the arrival of the last token overall, count the
    tokens that arrived after the start. Both boundaries are the last chunk of an engine step as the client
    sees it, so no step is cut in half. (A window ending when the first stream finishes would cut the step
    that ends it: the other streams' chunks of that step arrive just after it.)"""
    stream_prompts = [prompts.make(32) for _ in range(streams)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    arrivals = await asyncio.gather(*(client.token_arrival_times(p, new_tokens + 1) for p in stream_prompts))
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    start = max(times[0] for times in arrivals)
    end = max(times[-1] for times in arrivals)
    if end <= start:
        raise HttpBenchError("nothing to time after the first tokens: new_tokens must be at least 1")
    counted = sum(1 for times in arrivals for t in times if t > start)
    return HttpDecodeResult(
        streams=streams,
        tokens_per_s=counted / (end - start),
        new_tokens_per_stream=[len(times) - 1 for times in arrivals],
        client_cpu_share=cpu_share,
    )


async def time_to_first_token(client: BenchClient, prompt: list[int]) -> float:
    start = time.perf_counter()
    times = await client.token_arrival_times(prompt, 1)
    return (times[0] - start) * 1e3


async def ttft_cold_and_cached(client: BenchClient, prompts: PromptMaker, length: int) -> TtftResult:
    """TTFT of a fresh `length`-token prompt, then of the same prefix followed by a new question."""
    prefix = prompts.make(length)
    cold = await time_to_first_token(client, prefix + prompts.make(16))
    cached = await time_to_first_token(client, prefix + prompts.make(16))
    return TtftResult(cold_ms=cold, cached_ms=cached)


class HttpBench:
    """The workloads through one running server, one call at a time, so the runner can run each right after
    its engine-only twin: a busy machine's load then weighs on both alike. Call them in the engine-only
    order: the prompts come from the same PromptMaker seed, so the server sees the very same token ids."""

    def __init__(self, url: str, api_key: str, vocab_size: int) -> None:
        self._runner = asyncio.Runner()  # one event loop for every call
        self._client = BenchClient(url, api_key)
        self.prompts = PromptMaker(vocab_size)

    def prefill_tokens_per_s(self, length: int, repeats: int) -> float:
        return self._runner.run(prefill_tokens_per_s(self._client, self.prompts, length, repeats))

    def decode_throughput(self, streams: int, new_tokens: int) -> HttpDecodeResult:
        return self._runner.run(decode_throughput(self._client, self.prompts, streams, new_tokens))

    def ttft_cold_and_cached(self, length: int) -> TtftResult:
        return self._runner.run(ttft_cold_and_cached(self._client, self.prompts, length))

    def long_context(self, prompts: TextPrompts, context: int, new_tokens: int) -> LongContextResult:
        from ember.bench.long_context import long_context_run

        return self._runner.run(long_context_run(self._client, prompts, context, new_tokens))

    def arrivals(self, prompts: TextPrompts, cfg: ArrivalConfig, max_model_len: int) -> ArrivalResult:
        from ember.bench.arrivals import arrival_workload

        return self._runner.run(arrival_workload(self._client, prompts, cfg, max_model_len))

    def close(self) -> None:
        self._runner.close()
