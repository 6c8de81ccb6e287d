"""Long-context rows through HTTP: the first token after a long real-text prompt, and one stream's decode speed
with that context behind it (chat histories, RAG documents, agents and code all look like this)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ember.bench.http_workloads import BenchClient
from ember.bench.text_prompts import TextPrompts


@dataclass(frozen=True)
class LongContextResult:
    context: int  # prompt + generated tokens at the end of the request: the "8k" of "decode after 8k"
    prompt_tokens: int
    ttft_ms: float  # from sending the request to its first token (the whole prompt's prefill)
    decode_tokens_per_s: float  # the tokens after the first, over the time from the first to the last


def prompt_length(context: int, new_tokens: int) -> int:
    """The prompt that, with `new_tokens` generated after it, ends exactly at `context` tokens (so an 8k context
    fits an 8192-token model)."""
    length = context - new_tokens - 1
    if length < 1:
        raise ValueError(
            f"a {context}-token context has no room for a prompt and {new_tokens + 1} new tokens"
        )
    return length


async def long_context_run(
    client: BenchClient, prompts: TextPrompts, context: int, new_tokens: int
) -> LongContextResult:
    """One streamed request: a fresh prompt of real text, then new_tokens + 1 greedy tokens."""
    length = prompt_length(context, new_tokens)
    prompt = prompts.make(length)
    start = time.perf_counter()
    times = await client.token_arrival_times(prompt, new_tokens + 1)
    return LongContextResult(
        context=context,
        prompt_tokens=length,
        ttft_ms=(times[0] - start) * 1e3,
        decode_tokens_per_s=new_tokens / (times[-1] - times[0]),
    )
