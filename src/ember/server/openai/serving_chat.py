"""POST /v1/chat/completions: messages through the model's chat template, chat.completion objects out."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ember.chat.plan import ChatInputs
from ember.chat.reply import ReplyReader, ReplyStream
from ember.engine.outputs import CompletionOutput, RequestOutput
from ember.server.common.errors import APIError, as_api_error, error_body, invalid_request
from ember.server.common.field_policy import check_fields
from ember.server.common.generation import (
    ClientLeft,
    DisconnectWatch,
    EngineWatch,
    Generation,
    collect_finals,
)
from ember.server.common.metrics import RequestTimer, TokenCounts, perf_headers, perf_metrics
from ember.server.common.preparation import ChatAsk, PreparedRequest
from ember.server.common.raw_output import raw_output
from ember.server.common.services import ServingState
from ember.server.common.sse import DONE, event_stream, sse_data
from ember.server.common.unsupported_fields import chat_fields
from ember.server.openai.chat_deltas import chat_finish_reason, coalesced_deltas, tool_call_dict
from ember.server.openai.generation_fields import (
    as_response_format,
    check_output_constraint,
    output_constraint,
    refuse_streamed_prompt_logprobs,
    vllm_prompt_logprobs,
)
from ember.server.openai.logprob_objects import chat_logprobs
from ember.server.openai.protocol import ChatCompletionRequest
from ember.server.openai.responses import (
    ChoicePiece,
    StreamProgress,
    StreamUsage,
    completion_object,
    now_seconds,
    usage_dict,
)
from ember.structured.constraint_fields import RequestedConstraint


def chat_ask(
    body: ChatCompletionRequest, generic_tools: bool = True, constraint: RequestedConstraint | None = None
) -> ChatAsk:
    """The request as the preparation step takes it; `generic_tools`: the server's setting, which the body's
    own field overrides; `constraint`: its output constraint (output_constraint), whichever field set it."""
    wants_logprobs = body.wants_logprobs()
    sampling = body if constraint is None else as_response_format(body, constraint)
    # The plan's refusals name the field the client used.
    param_names = {}
    if constraint is not None and constraint.param != "response_format":
        param_names["response_format"] = constraint.param
    if body.thinking is not None:
        param_names["reasoning_effort"] = "thinking"
    return ChatAsk(
        model=body.model,
        inputs=functools.partial(_chat_inputs, sampling, generic_tools, constraint),
        sampling=sampling,
        max_tokens=body.token_budget("max_completion_tokens", "max_tokens"),
        behavior=body.context_length_exceeded_behavior or "truncate",
        logprobs=body.num_top_logprobs() if wants_logprobs else None,
        cache_key=body.cache_key(),
        param_names=param_names,
        prompt_logprobs=body.prompt_logprobs,
        include_stop_str_in_output=bool(body.include_stop_str_in_output),
    )


def _chat_inputs(
    body: ChatCompletionRequest, generic_tools: bool, constraint: RequestedConstraint | None = None
) -> ChatInputs:
    """The plan's inputs (on the preparation thread: a long conversation converts there), after the refusals
    only a chat body can have."""
    if constraint is not None:
        check_output_constraint(constraint)
    for name in body.UNSUPPORTED:
        if getattr(body, name) not in (None, []):
            raise invalid_request(
                f"{name} is the deprecated function-calling API, which this server does not implement; "
                "send tools and tool_choice instead",
                param=name,
                code="unsupported_parameter",
            )
    if body.top_logprobs is not None and not body.wants_logprobs():
        raise invalid_request("top_logprobs needs logprobs set to true", param="top_logprobs")
    return ChatInputs(
        messages=[m.for_template() for m in body.messages],
        tools=body.tools,
        tool_choice=body.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        reasoning_effort=body.reasoning_switch(),
        response_format=body.response_format,
        template_kwargs=body.chat_template_kwargs,
        add_generation_prompt=body.add_generation_prompt,
        continue_final_message=bool(body.continue_final_message),
        generic_tools=generic_tools if body.generic_tools is None else body.generic_tools,
    )


class ChatServing:
    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.known_fields = chat_fields()

    async def create(self, body: ChatCompletionRequest, http: Request) -> Response:
        timer = RequestTimer()
        watch = DisconnectWatch(http, self.state.engine)
        prepared, generations, builder = await self._start(body, http.headers, watch, timer)
        if body.stream:
            headers = {
                "x-request-id": prepared.request_id,
                "fireworks-prompt-tokens": str(prepared.prompt_tokens),
            }
            return event_stream(builder.stream(generations[0], watch), headers)
        payload, counts = await self._finish(builder, generations, watch)
        return JSONResponse(
            payload, headers={"x-request-id": prepared.request_id, **perf_headers(counts, timer)}
        )

    async def answer(self, body: ChatCompletionRequest, watch: EngineWatch) -> dict[str, Any]:
        """The whole chat.completion of a request that has no HTTP connection of its own (a batch line): the
        same checks, preparation, engine requests and response as `create`, at the watch's priority."""
        if body.stream:
            watch.close()
            raise invalid_request("stream is not supported here; leave it out", param="stream")
        prepared, generations, builder = await self._start(body, {}, watch, RequestTimer())
        payload, _ = await self._finish(builder, generations, watch)
        return payload

    async def _start(
        self, body: ChatCompletionRequest, headers: Mapping[str, str], watch: EngineWatch, timer: RequestTimer
    ) -> tuple[PreparedRequest, list[Generation], _ChatBuilder]:
        try:
            # A plain chat visits none of the field-policy and constraint modules (#18 counts files per request).
            if body.model_extra:
                check_fields(
                    "/v1/chat/completions", body.model_extra, self.known_fields, self.state.unknown_fields
                )
            if body.prompt_logprobs is not None:
                refuse_streamed_prompt_logprobs(body)
            constraint = output_constraint(body) if body.constraint_fields() else None
            ask = chat_ask(body, self.state.config.generic_tools, constraint)
            prepared = await self.state.preparation.chat(ask, headers, watch)
        except BaseException:
            watch.close()
            raise
        generations = await watch.open(prepared.requests)
        return prepared, generations, _ChatBuilder(self.state, body, prepared, timer)

    async def _finish(
        self, builder: _ChatBuilder, generations: list[Generation], watch: EngineWatch
    ) -> tuple[dict[str, Any], TokenCounts]:
        try:
            (final,) = await collect_finals(generations, builder.timer)
        finally:
            watch.close()
        if watch.client_left:  # aborted: the final output is cut short
            raise ClientLeft()
        return builder.full_response(final)


class _ChatBuilder:
    def __init__(
        self,
        state: ServingState,
        body: ChatCompletionRequest,
        prepared: PreparedRequest,
        timer: RequestTimer,
    ) -> None:
        assert prepared.reader is not None  # every chat preparation makes one
        self.state = state
        self.body = body
        self.id = prepared.response_id
        self.model = prepared.model
        self.created = now_seconds()
        self.timer = timer
        self.num_top = body.num_top_logprobs()
        self.reader: ReplyReader = prepared.reader
        self.prepared = prepared
        self.echo = _echoed_text(body)
        self._streams: dict[int, ReplyStream] = {}

    def _logprobs(self, entries: list[Any] | None) -> dict[str, Any] | None:
        if not self.body.wants_logprobs() or entries is None:
            return None
        return chat_logprobs(self.state.engine.tokenizer, entries, self.num_top)

    def _choice(self, final: RequestOutput, seq: CompletionOutput) -> dict[str, Any]:
        reply = self.reader.parse(seq.text)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.reasoning_content is not None and self.body.include_reasoning is not False:
            message["reasoning_content"] = reply.reasoning_content
        if reply.tool_calls:
            message["tool_calls"] = [tool_call_dict(call) for call in reply.tool_calls]
            message["content"] = reply.content or None
        if self.echo:
            message["content"] = self.echo + (message["content"] or "")
        finish_reason = chat_finish_reason(seq.finish_reason, len(reply.tool_calls))
        choice = {
            "index": seq.index,
            "message": message,
            "logprobs": self._logprobs(seq.logprobs),
            "finish_reason": finish_reason,
            "stop_reason": None if finish_reason == "tool_calls" else seq.stop_reason,
        }
        if self.body.return_token_ids:
            choice["token_ids"] = list(seq.token_ids)
        if self.body.raw_output:
            choice["raw_output"] = self._raw_output(final, seq)
        return choice

    def _raw_output(self, output: RequestOutput, seq: CompletionOutput) -> dict[str, Any]:
        return raw_output(
            [self.prepared.prompt_text or ""],
            output.prompt_token_ids,
            seq.text,
            seq.token_ids,
            self.prepared.requests[0].params.structured,
            self._logprobs(seq.logprobs),
        )

    def full_response(self, final: RequestOutput) -> tuple[dict[str, Any], TokenCounts]:
        if final.error:
            raise APIError(500, f"generation failed: {final.error}", code="generation_failed")
        self.timer.mark_end()
        choices = [self._choice(final, seq) for seq in final.outputs]
        counts = TokenCounts(
            prompt=len(final.prompt_token_ids),
            cached=final.num_cached_tokens,
            generated=sum(len(seq.token_ids) for seq in final.outputs),
            accepted_prediction=final.accepted_prediction_tokens,
            rejected_prediction=final.rejected_prediction_tokens,
        )
        self.state.metrics.observe_request(self.timer, [c["finish_reason"] for c in choices])
        usage = usage_dict(counts)
        payload = completion_object("chat.completion", self.id, self.created, self.model, choices, usage)
        if self.body.prompt_logprobs is not None:  # vLLM's place for them in a chat response: the top level
            tokenizer = self.state.engine.tokenizer
            payload["prompt_logprobs"] = vllm_prompt_logprobs(
                tokenizer, final.prompt_logprobs, self.body.prompt_logprobs
            )
        if self.body.return_token_ids:
            payload["prompt_token_ids"] = list(final.prompt_token_ids)
        if self.body.perf_metrics_in_response:
            payload["perf_metrics"] = perf_metrics(counts, self.timer)
        return payload, counts

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return completion_object("chat.completion.chunk", self.id, self.created, self.model, choices, None)

    def _deltas(self, piece: ChoicePiece) -> tuple[list[dict[str, Any]], str | None]:
        """The chunk deltas of this piece and its finish_reason; plain replies pass the text through."""
        seq = piece.seq
        if self.reader.is_plain:
            if seq.delta_text or not piece.finish_reason:
                return [{"content": seq.delta_text}], piece.finish_reason
            return [], piece.finish_reason
        stream = self._streams.setdefault(piece.index, self.reader.stream())
        deltas = stream.feed(seq.delta_text)
        if piece.finish_reason:
            deltas += stream.finish()
        if self.body.include_reasoning is False:  # vLLM: the reasoning is split off, and not sent
            deltas = [delta for delta in deltas if not delta.reasoning_content]
        return coalesced_deltas(deltas), chat_finish_reason(seq.finish_reason, stream.num_tool_calls)

    def _piece_chunks(
        self, piece: ChoicePiece, progress: StreamProgress, output: RequestOutput
    ) -> list[dict[str, Any]]:
        chunks = []
        if piece.first:  # every choice opens with the role, as OpenAI's stream does
            chunks += self._opening_chunks(piece.index, output)
        seq = piece.seq
        if not (seq.delta_text or seq.delta_token_ids or piece.finish_reason):
            return chunks
        deltas, finish_reason = self._deltas(piece)
        logprobs = self._logprobs(seq.delta_logprobs) if seq.delta_token_ids else None
        if not deltas and (finish_reason or logprobs is not None):
            deltas = [{}]
        for position, delta in enumerate(deltas):
            last = position == len(deltas) - 1
            choice = {
                "index": piece.index,
                "delta": delta,
                "logprobs": logprobs if position == 0 else None,
                "finish_reason": finish_reason if last else None,
                "stop_reason": (None if finish_reason == "tool_calls" else seq.stop_reason) if last else None,
            }
            if self.body.return_token_ids:
                choice["token_ids"] = list(seq.delta_token_ids) if position == 0 else []
            if self.body.raw_output and last and piece.finish_reason:
                choice["raw_output"] = self._raw_output(output, seq)
            extras = {"usage": None}
            if last and piece.finish_reason:
                extras = progress.chunk_extras(bool(self.body.perf_metrics_in_response))
            chunks.append({**self._chunk([choice]), **extras})
        return chunks

    def _opening_chunks(self, index: int, output: RequestOutput) -> list[dict[str, Any]]:
        """A choice's role chunk (with vLLM's prompt_token_ids), then its echoed text when echo asks for it."""
        role = {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        chunk = self._chunk([role])
        if self.body.return_token_ids:
            chunk["prompt_token_ids"] = list(output.prompt_token_ids)
        chunks = [chunk]
        if self.echo:
            echoed = {
                "index": index,
                "delta": {"content": self.echo},
                "logprobs": None,
                "finish_reason": None,
            }
            chunks.append(self._chunk([echoed]))
        return chunks

    async def stream(self, generation: Generation, watch: EngineWatch) -> AsyncIterator[str]:
        usage = StreamUsage(self.body.stream_options)
        progress = StreamProgress(
            1, self.body.n or 1, len(generation.request.prompt_token_ids), usage, self.timer
        )
        try:
            async with aclosing(generation.outputs()) as outputs:
                async for output in outputs:
                    for piece in progress.pieces(0, output):
                        for chunk in self._piece_chunks(piece, progress, output):
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


def _echoed_text(body: ChatCompletionRequest) -> str:
    """vLLM's chat echo: the final message's text, when it has the role of the reply (the assistant's, or with
    add_generation_prompt false the final message's own), goes in front of the reply."""
    if not body.echo:
        return ""
    role = "assistant" if body.add_generation_prompt is not False else body.messages[-1].role
    final = body.messages[-1]
    return final.text() if final.role == role else ""
