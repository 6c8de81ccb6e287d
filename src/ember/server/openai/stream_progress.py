"""Bookkeeping shared by the streamed completion and chat responses.

Engine outputs repeat every sequence of a request on each step (finished ones with an empty delta); this
turns them into the pieces worth a chunk, and knows when the last finish_reason goes out, which is the chunk
that carries usage and perf_metrics in Fireworks' style.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ember.engine.outputs import CompletionOutput, RequestOutput
from ember.server.common.errors import APIError
from ember.server.common.perf_metrics import RequestTimer, TokenCounts, perf_metrics
from ember.server.openai.responses import StreamUsage, api_finish_reason, usage_dict


@dataclass(frozen=True)
class ChoicePiece:
    index: int  # the choice index in the response: prompt position * n + sequence index
    seq: CompletionOutput
    first: bool  # the first piece of this choice (role delta / echoed prompt go here)
    finish_reason: str | None


class StreamProgress:
    def __init__(
        self, num_prompts: int, n: int, prompt_tokens: int, usage: StreamUsage, timer: RequestTimer
    ) -> None:
        self.n = n
        self.total_choices = num_prompts * n
        self.prompt_tokens = prompt_tokens
        self.usage = usage
        self.timer = timer
        self.generated = 0
        self.finished: dict[int, str | None] = {}
        self.started: set[int] = set()
        self._cached: dict[int, int] = {}

    def pieces(self, position: int, output: RequestOutput) -> Iterator[ChoicePiece]:
        """The sequences of `output` that have something to send: new tokens, or their finish."""
        if output.error:
            raise APIError(500, f"generation failed: {output.error}", code="generation_failed")
        self._cached[position] = output.num_cached_tokens
        for seq in output.outputs:
            index = position * self.n + seq.index
            if index in self.finished:
                continue
            self.generated += len(seq.delta_token_ids)
            self.timer.mark_tokens(len(seq.delta_token_ids))
            first = index not in self.started
            if not (seq.delta_text or seq.delta_token_ids or seq.finish_reason or first):
                continue
            self.started.add(index)
            reason = api_finish_reason(seq.finish_reason)
            if seq.finish_reason:
                self.finished[index] = reason
            yield ChoicePiece(index, seq, first, reason)

    @property
    def done(self) -> bool:
        return len(self.finished) == self.total_choices

    def counts(self) -> TokenCounts:
        return TokenCounts(self.prompt_tokens, sum(self._cached.values()), self.generated)

    def chunk_extras(self, perf_in_response: bool) -> dict[str, Any]:
        """`usage` (and perf_metrics) for the chunk just built: filled only on the last finishing chunk."""
        if not self.done:
            return {"usage": None}
        self.timer.mark_end()
        counts = self.counts()
        extras: dict[str, Any] = {"usage": None}
        if self.usage.on_finish_chunk:
            extras["usage"] = usage_dict(counts.prompt, counts.generated, counts.cached)
        if perf_in_response:
            extras["perf_metrics"] = perf_metrics(counts, self.timer)
        return extras

    def final_usage(self) -> dict[str, Any] | None:
        """The usage of OpenAI's trailing `choices: []` chunk, when the client asked for it."""
        if not self.usage.final_chunk:
            return None
        counts = self.counts()
        return usage_dict(counts.prompt, counts.generated, counts.cached)
