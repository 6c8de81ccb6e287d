"""POST /v1/completions: prompts in, legacy completion objects (or their SSE stream) out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ember.engine.outputs import CompletionOutput, RequestOutput
from ember.server.common.errors import APIError, as_api_error, error_body, invalid_request
from ember.server.common.generation import (
    DisconnectWatch,
    EngineRequest,
    Generation,
    cache_salt,
    collect_finals,
    merged_outputs,
    new_id,
    open_generations,
    response_request_id,
)
from ember.server.common.metrics import RequestTimer, TokenCounts, perf_headers, perf_metrics
from ember.server.common.prediction import speculation_params
from ember.server.common.sampling import build_sampling_params, resolve_max_tokens
from ember.server.common.services import ServingState
from ember.server.common.sse import DONE, event_stream, sse_data
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

# OpenAI's documented default for /v1/completions; chat instead runs to the end of the turn.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class _Echo:
    """The part of a prompt returned in front of the completion (echo / Fireworks' echo_last)."""

    text: str
    token_ids: list[int]
    first_position: int  # index of token_ids[0] in the prompt


def _echo_for(
    body: CompletionRequest, prompt: str | list[int], ids: list[int], state: ServingState
) -> _Echo | None:
    if body.echo:
        text = prompt if isinstance(prompt, str) else state.engine.tokenizer.decode(ids)
        return _Echo(text, ids, 0)
    if body.echo_last:
        start = max(0, len(ids) - body.echo_last)
        return _Echo(state.engine.tokenizer.decode(ids[start:]), ids[start:], start)
    return None


class CompletionServing:
    def __init__(self, state: ServingState) -> None:
        self.state = state

    def engine_requests(
        self, body: CompletionRequest, http: Request, completion_id: str
    ) -> tuple[list[EngineRequest], list[_Echo | None]]:
        """One engine request per prompt, with what each echoes back; every refusal here is a 400."""
        state = self.state
        if body.suffix:
            raise invalid_request(
                "suffix is not supported by this server", param="suffix", code="unsupported_parameter"
            )
        prompts = body.prompts()
        if not prompts:
            raise invalid_request("prompt must not be empty", param="prompt")
        if body.stream and body.best_of is not None and body.best_of > (body.n or 1):
            raise invalid_request("best_of > n cannot be streamed; set stream to false", param="best_of")
        behavior = body.context_length_exceeded_behavior or "truncate"
        salt = cache_salt(http, body.prompt_cache_isolation_key)
        echoes: list[_Echo | None] = []
        requests: list[EngineRequest] = []
        for i, prompt in enumerate(prompts):
            param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            ids = state.encoder.encode(prompt, param)
            requested = COMPLETIONS_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
            max_tokens = resolve_max_tokens(len(ids), requested, state.max_model_len, behavior, param)
            echo = _echo_for(body, prompt, ids, state)
            echoes.append(echo)
            params = build_sampling_params(
                body,
                state.limits,
                max_tokens=max_tokens,
                best_of=body.best_of,
                logprobs=body.logprobs,
                prompt_logprobs=body.logprobs if echo is not None else None,
                speculation=speculation_params(body, state.encoder),
            )
            lora_id = state.models.lora_id(body.model)
            requests.append(EngineRequest(f"{completion_id}-{i}", ids, params, salt, param, lora_id))
        return requests, echoes

    async def create(self, body: CompletionRequest, http: Request) -> Response:
        timer = RequestTimer()
        state = self.state
        model = state.models.resolve(body.model)
        completion_id = new_id("cmpl")
        requests, echoes = self.engine_requests(body, http, completion_id)
        watch = DisconnectWatch(http, state.engine, [r.request_id for r in requests])
        try:
            generations = await open_generations(state.engine, requests)
        except BaseException:
            watch.close()
            raise
        builder = _CompletionBuilder(state, body, completion_id, model, echoes, timer)
        request_id = response_request_id(http, completion_id)
        if body.stream:
            headers = {
                "x-request-id": request_id,
                "fireworks-prompt-tokens": str(sum(len(r.prompt_token_ids) for r in requests)),
            }
            return event_stream(builder.stream(generations, watch), headers)
        try:
            finals = await collect_finals(generations, timer)
        finally:
            watch.close()
        payload, counts = builder.full_response(finals)
        return JSONResponse(payload, headers={"x-request-id": request_id, **perf_headers(counts, timer)})


class _CompletionBuilder:
    def __init__(
        self,
        state: ServingState,
        body: CompletionRequest,
        completion_id: str,
        model: str,
        echoes: list[_Echo | None],
        timer: RequestTimer,
    ) -> None:
        self.state = state
        self.body = body
        self.id = completion_id
        self.model = model
        self.created = now_seconds()
        self.echoes = echoes
        self.timer = timer
        self.n = body.n or 1

    def _legacy(self) -> LegacyLogprobs | None:
        if self.body.logprobs is None:
            return None
        return LegacyLogprobs(self.state.engine.tokenizer, self.body.logprobs)

    def _add_echo(
        self, logprobs: LegacyLogprobs | None, echo: _Echo | None, output: RequestOutput
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
        return choice

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

    async def stream(self, generations: list[Generation], watch: DisconnectWatch) -> AsyncIterator[str]:
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
        return {
            "index": piece.index,
            "text": text,
            "logprobs": lp_slice,
            "finish_reason": piece.finish_reason,
            "stop_reason": seq.stop_reason,
        }
