"""POST /v1/responses on the chat pipeline: input items become chat messages (after the stored conversation of
previous_response_id), chat.plan renders them and builds the constraint and the reply reader, the engine
generates, and the reply comes back as output items, whole or as OpenAI's typed stream events; stored responses
are read, listed and deleted per owner account."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ember.chat.plan import ChatInputs
from ember.server.common.errors import APIError, invalid_request
from ember.server.common.generation import DisconnectWatch, collect_finals, open_generations
from ember.server.common.metrics import RequestTimer, perf_headers
from ember.server.common.preparation import CONTEXT_LENGTH_EXCEEDED, ChatAsk, PreparedRequest
from ember.server.common.protocol import SamplingRequest
from ember.server.common.services import ServingState
from ember.server.common.sse import event_stream
from ember.server.common.tenancy import tenant_of
from ember.server.responses.background import BackgroundRuns
from ember.server.responses.conversation import chat_messages, input_items
from ember.server.responses.objects import input_items_page, response_object
from ember.server.responses.options import PARAM_NAMES, ChatOptions, chat_options
from ember.server.responses.protocol import ResponsesRequest, include_refusal
from ember.server.responses.response_run import ResponseRun, Turn
from ember.server.responses.store import DB_FILE, ResponseStore
from ember.tuning.ownership import OwnerScope


def _first_dropped_turn(items: list[dict[str, Any]], start: int) -> int | None:
    """Where the conversation continues when truncation drops its oldest turn: the next user message."""
    for index in range(start + 1, len(items)):
        item = items[index]
        if item["type"] == "message" and item["role"] == "user":
            return index
    return None


class ResponsesServing:
    def __init__(
        self, state: ServingState, store: ResponseStore, background: BackgroundRuns | None = None
    ) -> None:
        self.state = state
        self.store = store
        # one store and one set of background runs for every model of a server: ids are the server's
        self.background = background if background is not None else BackgroundRuns()

    # -- preparation (on the preparation thread: the store and the template are read there) ---------------

    def _prepare(
        self, body: ResponsesRequest, scope: OwnerScope | None, headers: Mapping[str, str]
    ) -> tuple[PreparedRequest, Turn]:
        history = [] if body.previous_response_id is None else self._history(body.previous_response_id, scope)
        turn = Turn(history, input_items(body.input, lambda item_id: self.store.item(item_id, scope)))
        if not turn.new_items:
            raise invalid_request(
                "input is required: a string or a non-empty list of input items", param="input"
            )
        options = chat_options(body.tools, body.tool_choice, body.text, body.reasoning)
        conversation = turn.input_items
        start = 0
        while True:  # truncation "auto" drops the oldest turns until the prompt fits
            try:
                return self.state.preparation.prepare_chat(
                    self._ask(body, options, conversation[start:]), headers
                ), turn
            except APIError as error:
                if (
                    body.truncation == "auto"
                    and error.code == CONTEXT_LENGTH_EXCEEDED
                    and error.param == "messages"
                ):
                    next_start = _first_dropped_turn(conversation, start)
                    if next_start is not None:
                        start = next_start
                        continue
                raise _in_responses_terms(error) from None

    def _ask(self, body: ResponsesRequest, options: ChatOptions, items: list[dict[str, Any]]) -> ChatAsk:
        inputs = ChatInputs(
            messages=chat_messages(body.instructions, items),
            tools=options.tools,
            tool_choice=options.tool_choice,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            reasoning_effort=options.reasoning_effort,
            response_format=options.response_format,
            generic_tools=self.state.config.generic_tools,
            tool_call_threshold=self.state.config.tool_call_threshold,
        )
        return ChatAsk(
            model=body.model,
            inputs=lambda: inputs,
            sampling=SamplingRequest(temperature=body.temperature, top_p=body.top_p),
            max_tokens=body.max_output_tokens,
            logprobs=(body.top_logprobs or 0) if body.wants_logprobs else None,
            id_prefix="resp",
            param_names=PARAM_NAMES,
        )

    # -- POST /responses ------------------------------------------------------------------------------

    async def create(self, body: ResponsesRequest, http: Request) -> Response:
        refusal = body.refusals()
        if refusal is not None:
            raise invalid_request(refusal[1], param=refusal[0], code="unsupported_parameter")
        tenant = tenant_of(http)
        timer = RequestTimer()
        watch = DisconnectWatch(http, self.state.engine)
        try:
            prepared, turn = await self.state.preparation.run(
                self._prepare, body, tenant.scope, http.headers, watch=watch
            )
        except BaseException:
            watch.close()
            raise
        run = ResponseRun(self.state, self.store, body, prepared, turn, tenant, timer)
        if body.background:  # nobody waits for it: the client leaving changes nothing from here on
            watch.close()
            (generation,) = await open_generations(self.state.engine, prepared.requests)
            started = response_object(run.settings, "in_progress", [])
            try:
                await run.save(started)
            except BaseException:
                await generation.close()
                raise
            self.background.start(run.settings.id, run.in_background(generation))
            return JSONResponse(started, headers={"x-request-id": prepared.request_id})
        (generation,) = await watch.open(prepared.requests)
        if body.stream:
            return event_stream(run.stream(generation, watch), {"x-request-id": prepared.request_id})
        try:
            (final,) = await collect_finals([generation], timer)
        finally:
            watch.close()
        if final.error:
            raise APIError(500, f"generation failed: {final.error}", code="generation_failed")
        payload, counts = run.whole(final)
        await run.save(payload)
        return JSONResponse(
            payload, headers={"x-request-id": prepared.request_id, **perf_headers(counts, timer)}
        )

    async def count_input_tokens(self, body: ResponsesRequest, http: Request) -> dict[str, Any]:
        """POST /responses/input_tokens: the prompt length the same body would have, without generating."""
        refusal = body.refusals()
        if refusal is not None:
            raise invalid_request(refusal[1], param=refusal[0], code="unsupported_parameter")
        preparation = self.state.preparation
        count = await preparation.run(self._count, body, tenant_of(http).scope)
        return {"object": "response.input_tokens", "input_tokens": count}

    def _count(self, body: ResponsesRequest, scope: OwnerScope | None) -> int:
        history = [] if body.previous_response_id is None else self._history(body.previous_response_id, scope)
        items = [*history, *input_items(body.input, lambda item_id: self.store.item(item_id, scope))]
        options = chat_options(body.tools, body.tool_choice, body.text, body.reasoning)
        try:
            return self.state.preparation.count_chat_tokens(self._ask(body, options, items))
        except APIError as error:
            raise _in_responses_terms(error) from None

    def _history(self, response_id: str, scope: OwnerScope | None) -> list[dict[str, Any]]:
        previous = self.store.get(response_id, scope)
        if previous is None:
            raise invalid_request(
                f"previous response {response_id!r} not found (it was deleted, created with store false, or "
                "belongs to another account)",
                param="previous_response_id",
            )
        return previous.conversation

    # -- stored responses -----------------------------------------------------------------------------

    async def retrieve(self, response_id: str, http: Request) -> dict[str, Any]:
        if http.query_params.get("stream", "false").lower() == "true":
            raise invalid_request(
                "stream: only background responses can be streamed again, and this server runs none",
                param="stream",
            )
        return (await self._stored(response_id, http)).response

    async def input_items(self, response_id: str, http: Request) -> dict[str, Any]:
        query = http.query_params
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise invalid_request(
                f"limit must be an integer, got {query['limit']!r}", param="limit"
            ) from None
        stored = await self._stored(response_id, http)
        return input_items_page(
            stored.input_items, query.get("after"), query.get("before"), limit, query.get("order", "desc")
        )

    async def delete(self, response_id: str, http: Request) -> dict[str, Any]:
        if not await asyncio.to_thread(self.store.delete, response_id, tenant_of(http).scope):
            raise _not_found(response_id)
        await self.background.cancel(response_id)  # a deleted background response stops running
        return {"id": response_id, "object": "response", "deleted": True}

    async def cancel(self, response_id: str, http: Request) -> dict[str, Any]:
        """Stops a background response that is still running; one that has finished is returned as it is."""
        stored = await self._stored(response_id, http)
        if not stored.response.get("background"):
            raise invalid_request(
                "only responses created with background true can be cancelled", param="response_id"
            )
        if await self.background.cancel(response_id):
            stored = await self._stored(response_id, http)
        return stored.response

    async def _stored(self, response_id: str, http: Request) -> Any:
        """The caller's stored response; `include` in the query is checked as on create (the logprobs a
        response was created with are part of it)."""
        query = http.query_params
        refused = include_refusal([*query.getlist("include"), *query.getlist("include[]")])
        if refused is not None:
            raise invalid_request(refused[1], param=refused[0], code="unsupported_parameter")
        stored = await asyncio.to_thread(self.store.get, response_id, tenant_of(http).scope)
        if stored is None:
            raise _not_found(response_id)
        return stored


def _in_responses_terms(error: APIError) -> APIError:
    """The chat pipeline names chat parameters; a Responses client sent input and max_output_tokens."""
    param = error.param or ""
    if param == "messages" or param.startswith("messages["):
        error.param = "input"
    elif param == "max_tokens":
        error.param = "max_output_tokens"
    return error


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"no response with id {response_id!r}", param="response_id", code="not_found")


def responses_serving(state: ServingState, data_dir: Path | None) -> ResponsesServing:
    """The Responses surface; responses are stored in the data directory's responses.db, or in memory for the
    server's life without one."""
    return ResponsesServing(state, ResponseStore(None if data_dir is None else data_dir / DB_FILE))
