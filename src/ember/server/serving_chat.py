"""POST /v1/chat/completions: messages through the model's chat template, chat.completion objects out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ember.engine.outputs import CompletionOutput, RequestOutput
from ember.server.errors import APIError, as_api_error, error_body, invalid_request
from ember.server.generation import (
    DisconnectWatch,
    EngineRequest,
    Generation,
    collect_finals,
    open_generations,
)
from ember.server.logprobs import chat_logprobs
from ember.server.perf_metrics import RequestTimer, TokenCounts, perf_headers, perf_metrics
from ember.server.protocol_chat import ChatCompletionRequest
from ember.server.protocol_common import refuse_unsupported
from ember.server.responses import (
    StreamUsage,
    api_finish_reason,
    event_stream,
    new_id,
    now_seconds,
    usage_dict,
)
from ember.server.sampling import build_sampling_params, resolve_max_tokens
from ember.server.sse import DONE, sse_data
from ember.server.state import ServingState, cache_salt, response_request_id
from ember.server.stream_progress import ChoicePiece, StreamProgress


def _check_response_format(response_format: Any) -> None:
    # {"type": "text"} is what every request means anyway; structured output comes with a later change.
    if response_format is None or (
        isinstance(response_format, dict) and response_format.get("type") == "text"
    ):
        return
    raise invalid_request(
        "response_format other than text is not supported yet by this server",
        param="response_format",
        code="unsupported_parameter",
    )


class ChatServing:
    def __init__(self, state: ServingState) -> None:
        self.state = state

    def engine_request(self, body: ChatCompletionRequest, http: Request, request_id: str) -> EngineRequest:
        state = self.state
        refuse_unsupported(body, body.UNSUPPORTED)
        _check_response_format(body.response_format)
        for i, message in enumerate(body.messages):
            if message.tool_calls:
                raise invalid_request(
                    "tool calls in messages are not supported yet by this server",
                    param=f"messages[{i}].tool_calls",
                    code="unsupported_parameter",
                )
        if body.top_logprobs is not None and not body.wants_logprobs():
            raise invalid_request("top_logprobs needs logprobs set to true", param="top_logprobs")
        text = state.encoder.render_chat(
            [m.for_template() for m in body.messages],
            add_generation_prompt=body.add_generation_prompt is not False,
            template_kwargs=body.chat_template_kwargs,
        )
        ids = state.encoder.encode_chat(text)
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = resolve_max_tokens(
            len(ids),
            requested,
            state.max_model_len,
            body.context_length_exceeded_behavior or "truncate",
            "messages",
        )
        params = build_sampling_params(
            body,
            state.limits,
            max_tokens=max_tokens,
            logprobs=body.num_top_logprobs() if body.wants_logprobs() else None,
        )
        return EngineRequest(
            request_id, ids, params, cache_salt(http, body.prompt_cache_isolation_key), "messages"
        )

    async def create(self, body: ChatCompletionRequest, http: Request) -> Response:
        timer = RequestTimer()
        model = self.state.models.resolve(body.model)
        chat_id = new_id("chatcmpl")
        request = self.engine_request(body, http, chat_id)
        watch = DisconnectWatch(http, self.state.engine, [chat_id])
        try:
            generations = await open_generations(self.state.engine, [request])
        except BaseException:
            watch.close()
            raise
        builder = _ChatBuilder(self.state, body, chat_id, model, timer)
        request_id = response_request_id(http, chat_id)
        if body.stream:
            headers = {
                "x-request-id": request_id,
                "fireworks-prompt-tokens": str(len(request.prompt_token_ids)),
            }
            return event_stream(builder.stream(generations[0], watch), headers)
        try:
            (final,) = await collect_finals(generations, timer)
        finally:
            watch.close()
        payload, counts = builder.full_response(final)
        return JSONResponse(payload, headers={"x-request-id": request_id, **perf_headers(counts, timer)})


class _ChatBuilder:
    def __init__(
        self, state: ServingState, body: ChatCompletionRequest, chat_id: str, model: str, timer: RequestTimer
    ) -> None:
        self.state = state
        self.body = body
        self.id = chat_id
        self.model = model
        self.created = now_seconds()
        self.timer = timer
        self.num_top = body.num_top_logprobs()

    def _logprobs(self, entries: list[Any] | None) -> dict[str, Any] | None:
        if not self.body.wants_logprobs() or entries is None:
            return None
        return chat_logprobs(self.state.engine.tokenizer, entries, self.num_top)

    def _choice(self, seq: CompletionOutput) -> dict[str, Any]:
        return {
            "index": seq.index,
            "message": {"role": "assistant", "content": seq.text},
            "logprobs": self._logprobs(seq.logprobs),
            "finish_reason": api_finish_reason(seq.finish_reason),
            "stop_reason": seq.stop_reason,
        }

    def full_response(self, final: RequestOutput) -> tuple[dict[str, Any], TokenCounts]:
        if final.error:
            raise APIError(500, f"generation failed: {final.error}", code="generation_failed")
        self.timer.mark_end()
        choices = [self._choice(seq) for seq in final.outputs]
        counts = TokenCounts(
            prompt=len(final.prompt_token_ids),
            cached=final.num_cached_tokens,
            generated=sum(len(seq.token_ids) for seq in final.outputs),
        )
        self.state.metrics.observe_request(self.timer, [c["finish_reason"] for c in choices])
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage_dict(counts.prompt, counts.generated, counts.cached),
        }
        if self.body.perf_metrics_in_response:
            payload["perf_metrics"] = perf_metrics(counts, self.timer)
        return payload, counts

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": None,
        }

    def _piece_chunks(self, piece: ChoicePiece, progress: StreamProgress) -> list[dict[str, Any]]:
        chunks = []
        if piece.first:  # every choice opens with the role, as OpenAI's stream does
            role = {
                "index": piece.index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            chunks.append(self._chunk([role]))
        seq = piece.seq
        if seq.delta_text or seq.delta_token_ids or piece.finish_reason:
            delta = {"content": seq.delta_text} if seq.delta_text or not piece.finish_reason else {}
            choice = {
                "index": piece.index,
                "delta": delta,
                "logprobs": self._logprobs(seq.delta_logprobs) if seq.delta_token_ids else None,
                "finish_reason": piece.finish_reason,
                "stop_reason": seq.stop_reason,
            }
            chunks.append(
                {**self._chunk([choice]), **progress.chunk_extras(bool(self.body.perf_metrics_in_response))}
            )
        return chunks

    async def stream(self, generation: Generation, watch: DisconnectWatch) -> AsyncIterator[str]:
        usage = StreamUsage(self.body.stream_options)
        progress = StreamProgress(
            1, self.body.n or 1, len(generation.request.prompt_token_ids), usage, self.timer
        )
        try:
            async with aclosing(generation.outputs()) as outputs:
                async for output in outputs:
                    for piece in progress.pieces(0, output):
                        for chunk in self._piece_chunks(piece, progress):
                            yield sse_data(chunk)
            final_usage = progress.final_usage()
            if final_usage is not None:
                yield sse_data({**self._chunk([]), "usage": final_usage})
            self.state.metrics.observe_request(self.timer, list(progress.finished.values()))
        except Exception as error:  # noqa: BLE001 - headers are gone; the error travels as an SSE event
            yield sse_data(error_body(as_api_error(error), "/v1/chat/completions"))
        finally:
            watch.close()
            await generation.close()
        yield DONE
