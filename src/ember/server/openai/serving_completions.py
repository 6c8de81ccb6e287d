"""POST /v1/completions: prompts in, legacy completion objects (or their SSE stream) out."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ember.engine.outputs import CompletionOutput, RequestOutput
from ember.server.common.errors import APIError, as_api_error, error_body, invalid_request
from ember.server.common.field_policy import check_fields
from ember.server.common.generation import (
    ClientLeft,
    DisconnectWatch,
    EngineWatch,
    Generation,
    collect_finals,
    merged_outputs,
)
from ember.server.common.metrics import RequestTimer, TokenCounts, perf_headers, perf_metrics
from ember.server.common.preparation import PreparedRequest, PromptEcho, PromptsAsk
from ember.server.common.raw_output import raw_output
from ember.server.common.services import ServingState
from ember.server.common.sse import DONE, event_stream, sse_data
from ember.server.common.unsupported_fields import completions_fields
from ember.server.openai.generation_fields import (
    as_response_format,
    check_output_constraint,
    output_constraint,
    refuse_streamed_prompt_logprobs,
    vllm_prompt_logprobs,
)
from ember.server.openai.logprob_objects import LegacyLogprobs
from ember.server.openai.protocol import CompletionRequest
from ember.server.openai.responses import (
    ChoicePiece,
    StreamProgress,
    StreamUsage,
    api_finish_reason,
    completion_object,
    now_seconds,
    usage_dict,
)
from ember.structured.constraint_fields import RequestedConstraint

# OpenAI's documented default for /v1/completions; chat instead runs to the end of the turn.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def prompts_ask(body: CompletionRequest, constraint: RequestedConstraint | None = None) -> PromptsAsk:
    """The request as the preparation step takes it; `constraint`: its output constraint (output_constraint),
    whichever field set it."""
    budget = body.token_budget("max_tokens", "max_completion_tokens")
    if not body.sets_token_budget("max_tokens", "max_completion_tokens"):
        budget = COMPLETIONS_DEFAULT_MAX_TOKENS
    return PromptsAsk(
        model=body.model,
        prompts=functools.partial(_prompts, body, constraint),
        sampling=body if constraint is None else as_response_format(body, constraint),
        max_tokens=budget,
        behavior=body.context_length_exceeded_behavior or "truncate",
        best_of=body.best_of,
        logprobs=body.num_logprobs(),
        echo=bool(body.echo),
        echo_last=body.echo_last,
        cache_key=body.cache_key(),
        prompt_logprobs=body.prompt_logprobs,
        include_stop_str_in_output=bool(body.include_stop_str_in_output),
    )


def _prompts(body: CompletionRequest, constraint: RequestedConstraint | None = None) -> list[str | list[int]]:
    """The prompts (on the preparation thread: a long token list is copied there), after the refusals only a
    completion body can have."""
    if constraint is not None:
        check_output_constraint(constraint)
    if body.suffix:
        raise invalid_request(
            "suffix is not supported by this server", param="suffix", code="unsupported_parameter"
        )
    prompts = body.prompts()
    if not prompts:
        raise invalid_request("prompt must not be empty", param="prompt")
    if body.stream and body.best_of is not None and body.best_of > (body.n or 1):
        raise invalid_request("best_of > n cannot be streamed; set stream to false", param="best_of")
    return prompts


class CompletionServing:
    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.known_fields = completions_fields()

    async def create(self, body: CompletionRequest, http: Request) -> Response:
        timer = RequestTimer()
        watch = DisconnectWatch(http, self.state.engine)
        prepared, generations, builder = await self._start(body, http.headers, watch, timer)
        if body.stream:
            headers = {
                "x-request-id": prepared.request_id,
                "fireworks-prompt-tokens": str(prepared.prompt_tokens),
            }
            return event_stream(builder.stream(generations, watch), headers)
        payload, counts = await self._finish(builder, generations, watch)
        return JSONResponse(
            payload, headers={"x-request-id": prepared.request_id, **perf_headers(counts, timer)}
        )

    async def answer(self, body: CompletionRequest, watch: EngineWatch) -> dict[str, Any]:
        """The whole text_completion of a request that has no HTTP connection of its own (a batch line): the
        same checks, preparation, engine requests and response as `create`, at the watch's priority."""
        if body.stream:
            watch.close()
            raise invalid_request("stream is not supported here; leave it out", param="stream")
        prepared, generations, builder = await self._start(body, {}, watch, RequestTimer())
        payload, _ = await self._finish(builder, generations, watch)
        return payload

    async def _start(
        self, body: CompletionRequest, headers: Mapping[str, str], watch: EngineWatch, timer: RequestTimer
    ) -> tuple[PreparedRequest, list[Generation], _CompletionBuilder]:
        try:
            if body.model_extra:
                check_fields(
                    "/v1/completions", body.model_extra, self.known_fields, self.state.unknown_fields
                )
            if body.prompt_logprobs is not None:
                refuse_streamed_prompt_logprobs(body)
            ask = prompts_ask(body, output_constraint(body) if body.constraint_fields() else None)
            prepared = await self.state.preparation.prompts(ask, headers, watch)
        except BaseException:
            watch.close()
            raise
        generations = await watch.open(prepared.requests)
        return prepared, generations, _CompletionBuilder(self.state, body, prepared, ask.logprobs, timer)

    async def _finish(
        self, builder: _CompletionBuilder, generations: list[Generation], watch: EngineWatch
    ) -> tuple[dict[str, Any], TokenCounts]:
        try:
            finals = await collect_finals(generations, builder.timer)
        finally:
            watch.close()
        if watch.client_left:  # aborted: the final outputs are cut short
            raise ClientLeft()
        return builder.full_response(finals)


class _CompletionBuilder:
    def __init__(
        self,
        state: ServingState,
        body: CompletionRequest,
        prepared: PreparedRequest,
        num_logprobs: int | None,
        timer: RequestTimer,
    ) -> None:
        self.state = state
        self.body = body
        self.id = prepared.response_id
        self.model = prepared.model
        self.created = now_seconds()
        self.echoes: list[PromptEcho | None] = list(prepared.echoes)
        self.structured = [request.params.structured for request in prepared.requests]
        self.timer = timer
        self.n = body.n or 1
        self.num_logprobs = num_logprobs  # logprobs, or Fireworks' top_logprobs

    def _legacy(self) -> LegacyLogprobs | None:
        if self.num_logprobs is None:
            return None
        return LegacyLogprobs(self.state.engine.tokenizer, self.num_logprobs)

    def _add_echo(
        self, logprobs: LegacyLogprobs | None, echo: PromptEcho | None, output: RequestOutput
    ) -> dict[str, Any] | None:
        if logprobs is None or echo is None:
            return None
        prompt_lps = output.prompt_logprobs or []
        entries = [
            prompt_lps[p] if p < len(prompt_lps) else None
            for p in range(echo.first_position, echo.first_position + len(echo.token_ids))
        ]
        return logprobs.add(echo.token_ids, entries)

    def _choice(self, position: int, output: RequestOutput, seq: CompletionOutput) -> dict[str, Any]:
        echo = self.echoes[position]
        logprobs = self._legacy()
        self._add_echo(logprobs, echo, output)
        if logprobs is not None:
            logprobs.add(seq.token_ids, list(seq.logprobs or [None] * len(seq.token_ids)))
        choice: dict[str, Any] = {
            "index": position * self.n + seq.index,
            "text": (echo.text if echo else "") + seq.text,
            "logprobs": logprobs.as_dict() if logprobs else None,
            "finish_reason": api_finish_reason(seq.finish_reason),
            "stop_reason": seq.stop_reason,
        }
        if self.body.return_token_ids:
            choice["token_ids"] = list(seq.token_ids)
            choice["prompt_token_ids"] = list(output.prompt_token_ids)
        if self.body.prompt_logprobs is not None:
            tokenizer = self.state.engine.tokenizer
            choice["prompt_logprobs"] = vllm_prompt_logprobs(
                tokenizer, output.prompt_logprobs, self.body.prompt_logprobs
            )
        if self.body.raw_output:
            choice["raw_output"] = self._raw_output(position, output, seq)
        return choice

    def _raw_output(self, position: int, output: RequestOutput, seq: CompletionOutput) -> dict[str, Any]:
        prompt = self.body.prompts()[position]
        fragments: list[str | int] = [prompt] if isinstance(prompt, str) else list(prompt)
        logprobs = self._legacy()
        if logprobs is not None:
            logprobs.add(seq.token_ids, list(seq.logprobs or [None] * len(seq.token_ids)))
        return raw_output(
            fragments,
            output.prompt_token_ids,
            seq.text,
            seq.token_ids,
            self.structured[position],
            logprobs.as_dict() if logprobs else None,
        )

    def full_response(self, finals: list[RequestOutput]) -> tuple[dict[str, Any], TokenCounts]:
        for final in finals:
            if final.error:
                raise APIError(500, f"generation failed: {final.error}", code="generation_failed")
        choices = [self._choice(p, final, seq) for p, final in enumerate(finals) for seq in final.outputs]
        generated = sum(len(seq.token_ids) for final in finals for seq in final.outputs)
        self.timer.mark_end()
        counts = TokenCounts(
            prompt=sum(len(f.prompt_token_ids) for f in finals),
            cached=sum(f.num_cached_tokens for f in finals),
            generated=generated,
            accepted_prediction=sum(f.accepted_prediction_tokens for f in finals),
            rejected_prediction=sum(f.rejected_prediction_tokens for f in finals),
        )
        self.state.metrics.observe_request(self.timer, [c["finish_reason"] for c in choices])
        usage = usage_dict(counts)
        payload = completion_object("text_completion", self.id, self.created, self.model, choices, usage)
        if self.body.perf_metrics_in_response:
            payload["perf_metrics"] = perf_metrics(counts, self.timer)
        return payload, counts

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return completion_object("text_completion", self.id, self.created, self.model, choices, None)

    async def stream(self, generations: list[Generation], watch: EngineWatch) -> AsyncIterator[str]:
        prompt_tokens = sum(len(g.request.prompt_token_ids) for g in generations)
        progress = StreamProgress(
            len(generations), self.n, prompt_tokens, StreamUsage(self.body.stream_options), self.timer
        )
        logprobs: dict[int, LegacyLogprobs | None] = {}
        try:
            async with aclosing(merged_outputs(generations)) as outputs:
                async for position, output in outputs:
                    for piece in progress.pieces(position, output):
                        choice = self._stream_choice(piece, position, output, logprobs)
                        extras = progress.chunk_extras(bool(self.body.perf_metrics_in_response))
                        yield sse_data({**self._chunk([choice]), **extras})
            usage = progress.final_usage()
            if usage is not None:
                yield sse_data({**self._chunk([]), "usage": usage})
            self.state.metrics.observe_request(self.timer, list(progress.finished.values()))
        except Exception as error:  # noqa: BLE001 - headers are gone; the error travels as an SSE event
            yield sse_data(error_body(as_api_error(error), "/v1/completions"))
        finally:
            watch.close()
        yield DONE

    def _stream_choice(
        self,
        piece: ChoicePiece,
        position: int,
        output: RequestOutput,
        logprobs: dict[int, LegacyLogprobs | None],
    ) -> dict[str, Any]:
        seq = piece.seq
        text = seq.delta_text
        lp_slice: dict[str, Any] | None = None
        if piece.first:  # a choice's first chunk carries the echoed prompt
            logprobs[piece.index] = self._legacy()
            echo = self.echoes[position]
            text = (echo.text if echo else "") + text
            lp_slice = self._add_echo(logprobs[piece.index], echo, output)
        legacy = logprobs[piece.index]
        if legacy is not None:
            piece_lps = legacy.add(
                seq.delta_token_ids, list(seq.delta_logprobs or [None] * len(seq.delta_token_ids))
            )
            lp_slice = piece_lps if lp_slice is None else {k: lp_slice[k] + piece_lps[k] for k in piece_lps}
        choice: dict[str, Any] = {
            "index": piece.index,
            "text": text,
            "logprobs": lp_slice,
            "finish_reason": piece.finish_reason,
            "stop_reason": seq.stop_reason,
        }
        if self.body.return_token_ids:  # the prompt's ids on a choice's first chunk, the new ones on each
            if piece.first:
                choice["prompt_token_ids"] = list(output.prompt_token_ids)
            choice["token_ids"] = list(seq.delta_token_ids)
        if self.body.raw_output and piece.finish_reason:
            choice["raw_output"] = self._raw_output(position, output, seq)
        return choice
