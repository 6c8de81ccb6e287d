"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) on the same engine."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ember.chat.plan import ChatInputs
from ember.chat.reply import ReplyReader
from ember.engine.outputs import CompletionOutput
from ember.server.anthropic.content_blocks import BlockEvents, content_blocks, new_tool_use_id
from ember.server.anthropic.protocol import CountTokensRequest, MessagesRequest
from ember.server.common.errors import APIError, as_api_error, error_body, invalid_request
from ember.server.common.field_policy import check_fields
from ember.server.common.generation import DisconnectWatch, Generation, collect_finals
from ember.server.common.metrics import RequestTimer, TokenCounts, perf_headers
from ember.server.common.preparation import ChatAsk
from ember.server.common.protocol import SamplingRequest
from ember.server.common.raw_output import raw_output
from ember.server.common.services import ServingState
from ember.server.common.sse import event_stream, sse_event
from ember.server.common.unsupported_fields import messages_fields
from ember.structured.constraint_fields import ConstraintFieldError, RequestedConstraint, check_constraint

# chat.plan names OpenAI's parameters; these are Anthropic's names for the same things.
_ANTHROPIC_PARAMS = {"reasoning_effort": "thinking"}


def stop_fields(seq: CompletionOutput, num_tool_calls: int = 0) -> tuple[str | None, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for a finished sequence."""
    if seq.finish_reason == "length":
        return "max_tokens", None
    if num_tool_calls:
        return "tool_use", None
    if seq.finish_reason == "stop" and isinstance(seq.stop_reason, str):
        return "stop_sequence", seq.stop_reason
    return "end_turn", None


def messages_ask(body: CountTokensRequest, generic_tools: bool = True) -> ChatAsk:
    """The request as the preparation step takes it: Anthropic's sampling fields on OpenAI's names (count_tokens
    has none; it only needs the prompt), output_config.format as the chat plan's response_format."""
    try:
        constraint = body.output_constraint()
    except ConstraintFieldError as error:
        raise invalid_request(str(error), param=error.param) from None
    param_names = dict(_ANTHROPIC_PARAMS)
    if constraint is not None:
        param_names["response_format"] = constraint.param
    sampling = SamplingRequest()
    max_tokens = None
    if isinstance(body, MessagesRequest):
        sampling = SamplingRequest(
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, stop=body.stop_sequences
        )
        max_tokens = body.max_tokens
    return ChatAsk(
        model=body.model,
        inputs=functools.partial(_chat_inputs, body, generic_tools, constraint),
        sampling=sampling,
        max_tokens=max_tokens,
        id_prefix="msg",
        new_tool_id=new_tool_use_id,
        param_names=param_names,
    )


def _chat_inputs(
    body: CountTokensRequest, generic_tools: bool, constraint: RequestedConstraint | None = None
) -> ChatInputs:
    if constraint is not None:  # compiled here, off the event loop, so a refusal names the client's field
        try:
            check_constraint(constraint)
        except ConstraintFieldError as error:
            raise invalid_request(str(error), param=error.param) from None
    try:
        return ChatInputs(
            messages=body.chat_messages(),
            tools=body.openai_tools(),
            tool_choice=body.tool_choice,
            parallel_tool_calls=body.parallel_tool_calls(),
            reasoning_effort=body.reasoning_effort(),
            continue_final_message=body.continues_final_message(),
            generic_tools=generic_tools if body.generic_tools is None else body.generic_tools,
            response_format=None if constraint is None else constraint.response_format,
        )
    except ValueError as error:
        message = str(error)
        raise invalid_request(message, param=message.split(".", 1)[0].split("[", 1)[0]) from None


class MessagesServing:
    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.known_fields = messages_fields()

    def _check_fields(self, route: str, body: CountTokensRequest) -> None:
        if body.model_extra:
            check_fields(route, body.model_extra, self.known_fields, self.state.unknown_fields)

    async def count_tokens(self, body: CountTokensRequest) -> dict[str, int]:
        self._check_fields("/v1/messages/count_tokens", body)
        preparation = self.state.preparation
        return {
            "input_tokens": await preparation.run(
                preparation.count_chat_tokens, messages_ask(body, self.state.config.generic_tools)
            )
        }

    async def create(self, body: MessagesRequest, http: Request) -> Response:
        timer = RequestTimer()
        self._check_fields("/v1/messages", body)
        state = self.state
        watch = DisconnectWatch(http, state.engine)
        try:
            prepared = await state.preparation.chat(
                messages_ask(body, state.config.generic_tools), http.headers, watch
            )
        except BaseException:
            watch.close()
            raise
        (generation,) = await watch.open(prepared.requests)
        reader = prepared.reader
        assert reader is not None  # every chat preparation makes one
        if body.stream:
            shown = prepared.prompt_text if body.raw_output else None
            events = self._stream(generation, watch, prepared.model, timer, reader, shown)
            return event_stream(events, {"x-request-id": prepared.request_id})
        try:
            (final,) = await collect_finals([generation], timer)
        finally:
            watch.close()
        if final.error:
            raise APIError(500, f"generation failed: {final.error}", code="generation_failed")
        timer.mark_end()
        seq = final.outputs[0]
        reply = reader.parse(seq.text)
        stop_reason, stop_sequence = stop_fields(seq, len(reply.tool_calls))
        state.metrics.observe_request(timer, [seq.finish_reason])
        counts = TokenCounts(prepared.prompt_tokens, final.num_cached_tokens, len(seq.token_ids))
        payload = {
            "id": prepared.response_id,
            "type": "message",
            "role": "assistant",
            "model": prepared.model,
            "content": content_blocks(reply),
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": self._usage(counts),
        }
        if body.raw_output:  # Fireworks' extension, at the message's top level
            structured = generation.request.params.structured
            payload["raw_output"] = raw_output(
                [prepared.prompt_text or ""], final.prompt_token_ids, seq.text, seq.token_ids, structured
            )
        return JSONResponse(
            payload, headers={"x-request-id": prepared.request_id, **perf_headers(counts, timer)}
        )

    @staticmethod
    def _usage(counts: TokenCounts) -> dict[str, int]:
        return {
            "input_tokens": counts.prompt,
            "output_tokens": counts.generated,
            "cache_read_input_tokens": counts.cached,
        }

    async def _stream(
        self,
        generation: Generation,
        watch: DisconnectWatch,
        model: str,
        timer: RequestTimer,
        reader: ReplyReader,
        raw_prompt: str | None = None,
    ) -> AsyncIterator[str]:
        """message_start, (content_block_start, content_block_delta..., content_block_stop)+ per block,
        message_delta, message_stop; a ping after the first block start, as Anthropic sends it. `raw_prompt`
        (Fireworks' raw_output asked for): the rendered prompt, and message_delta carries the raw_output."""
        prompt_tokens = len(generation.request.prompt_token_ids)
        message: dict[str, Any] = {
            "id": generation.request.request_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
        }
        yield sse_event("message_start", {"type": "message_start", "message": message})
        blocks = BlockEvents()
        if reader.is_plain:  # plain text: one text block, opened at once
            for event in blocks.open({"type": "text", "text": ""}, "text"):
                yield event
        yield sse_event("ping", {"type": "ping"})
        reply = reader.stream()
        try:
            last = generation.first
            async with aclosing(generation.outputs()) as outputs:
                async for output in outputs:
                    if output.error:
                        raise APIError(500, f"generation failed: {output.error}", code="generation_failed")
                    last = output
                    seq = output.outputs[0]
                    timer.mark_tokens(len(seq.delta_token_ids))
                    deltas = reply.feed(seq.delta_text)
                    if seq.finish_reason:
                        deltas += reply.finish()
                    for event in blocks.events(deltas):
                        yield event
            timer.mark_end()
            seq = last.outputs[0]
            stop_reason, stop_sequence = stop_fields(seq, blocks.num_tool_calls)
            self.state.metrics.observe_request(timer, [seq.finish_reason])
            counts = TokenCounts(prompt_tokens, last.num_cached_tokens, len(seq.token_ids))
            for event in blocks.finish():
                yield event
            delta: dict[str, Any] = {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": self._usage(counts),
            }
            if raw_prompt is not None:
                structured = generation.request.params.structured
                ids = last.prompt_token_ids
                delta["raw_output"] = raw_output([raw_prompt], ids, seq.text, seq.token_ids, structured)
            yield sse_event("message_delta", delta)
            yield sse_event("message_stop", {"type": "message_stop"})
        except Exception as error:  # noqa: BLE001 - headers are gone; the error travels as an SSE event
            yield sse_event("error", error_body(as_api_error(error), "/v1/messages"))
        finally:
            watch.close()
            await generation.close()
