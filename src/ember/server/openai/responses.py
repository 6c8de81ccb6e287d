"""Pieces shared by the completion and chat completion responses: the object envelope, usage and finish
reasons; and for streams, which sequences of an engine output are worth a chunk and which chunk carries usage.

Engine outputs repeat every sequence of a request on each step (finished ones with an empty delta). Usage
(and perf_metrics) ride on the chunk of the last finish_reason in Fireworks' style, or on a final
`choices: []` chunk in OpenAI's (stream_options).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ember.engine.outputs import CompletionOutput, RequestOutput
from ember.server.common.errors import APIError
from ember.server.common.metrics import RequestTimer, TokenCounts, perf_metrics
from ember.server.common.protocol import StreamOptions


def now_seconds() -> int:
    return int(time.time())


def completion_object(
    kind: str,
    response_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """The envelope shared by completion and chat completion objects and their stream chunks."""
    return {
        "id": response_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def usage_dict(counts: TokenCounts) -> dict[str, Any]:
    """OpenAI's usage object; completion_tokens_details counts the draft tokens speculative decoding verified
    (Predicted Outputs' names, also for n-gram drafts): kept in the reply, and drafted but not kept."""
    return {
        "prompt_tokens": counts.prompt,
        "completion_tokens": counts.generated,
        "total_tokens": counts.prompt + counts.generated,
        "prompt_tokens_details": {"cached_tokens": counts.cached},
        "completion_tokens_details": {
            "accepted_prediction_tokens": counts.accepted_prediction,
            "rejected_prediction_tokens": counts.rejected_prediction,
        },
    }


def api_finish_reason(engine_reason: str | None) -> str | None:
    # "abort" only reaches a client that is already gone, or one whose server is shutting down.
    return {"abort": "stop"}.get(engine_reason or "", engine_reason)


class StreamUsage:
    """Where a stream reports usage.

    Fireworks (default): on the chunk carrying the last finish_reason. OpenAI, when the client sends
    stream_options: include_usage true gives `usage: null` on every chunk and a final `choices: []` chunk
    with the usage; include_usage false gives no usage at all.
    """

    def __init__(self, options: StreamOptions | None) -> None:
        self.openai_style = options is not None
        self.final_chunk = bool(options and options.include_usage)

    @property
    def on_finish_chunk(self) -> bool:
        return not self.openai_style


# -- streams ----------------------------------------------------------------------------------------------


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
        self._predictions: dict[int, tuple[int, int]] = {}  # position -> (accepted, rejected) draft tokens

    def pieces(self, position: int, output: RequestOutput) -> Iterator[ChoicePiece]:
        """The sequences of `output` that have something to send: new tokens, or their finish."""
        if output.error:
            raise APIError(500, f"generation failed: {output.error}", code="generation_failed")
        self._cached[position] = output.num_cached_tokens
        self._predictions[position] = (output.accepted_prediction_tokens, output.rejected_prediction_tokens)
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
        return TokenCounts(
            self.prompt_tokens,
            sum(self._cached.values()),
            self.generated,
            accepted_prediction=sum(accepted for accepted, _ in self._predictions.values()),
            rejected_prediction=sum(rejected for _, rejected in self._predictions.values()),
        )

    def chunk_extras(self, perf_in_response: bool) -> dict[str, Any]:
        """`usage` (and perf_metrics) for the chunk just built: filled only on the last finishing chunk."""
        if not self.done:
            return {"usage": None}
        self.timer.mark_end()
        counts = self.counts()
        extras: dict[str, Any] = {"usage": None}
        if self.usage.on_finish_chunk:
            extras["usage"] = usage_dict(counts)
        if perf_in_response:
            extras["perf_metrics"] = perf_metrics(counts, self.timer)
        return extras

    def final_usage(self) -> dict[str, Any] | None:
        """The usage of OpenAI's trailing `choices: []` chunk, when the client asked for it."""
        if not self.usage.final_chunk:
            return None
        return usage_dict(self.counts())
