"""One response being generated: its settings and output items, the whole response or its typed stream
events, and storing it when it is done (`store`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from ember.engine.outputs import CompletionOutput, RequestOutput
from ember.server.common.errors import APIError, as_api_error
from ember.server.common.generation import DisconnectWatch, Generation, collect_finals
from ember.server.common.metrics import RequestTimer, TokenCounts
from ember.server.common.preparation import PreparedRequest
from ember.server.common.services import ServingState
from ember.server.common.sse import sse_event
from ember.server.common.tenancy import Tenant
from ember.server.openai.logprob_objects import chat_logprobs
from ember.server.responses.events import Event, OutputItems, is_delta, obfuscation
from ember.server.responses.objects import ResponseSettings, response_object, response_tools, usage
from ember.server.responses.protocol import ResponsesRequest
from ember.server.responses.store import ResponseStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Turn:
    """The conversation one response answers: the stored one it continues, then this request's input."""

    history: list[dict[str, Any]]
    new_items: list[dict[str, Any]]

    @property
    def input_items(self) -> list[dict[str, Any]]:
        return [*self.history, *self.new_items]


class ResponseRun:
    """One response being generated: its settings, its output items and how it is stored."""

    def __init__(
        self,
        state: ServingState,
        store: ResponseStore,
        body: ResponsesRequest,
        prepared: PreparedRequest,
        turn: Turn,
        tenant: Tenant,
        timer: RequestTimer,
    ) -> None:
        self.state = state
        self.store = store
        self.body = body
        self.turn = turn
        self.tenant = tenant
        self.timer = timer
        self.reader = prepared.reader
        assert self.reader is not None  # every chat preparation makes one
        params = prepared.requests[0].params
        self.settings = ResponseSettings(
            id="resp_" + prepared.response_id.split("-", 1)[1],
            model=prepared.model,
            created_at=int(time.time()),
            body=body,
            temperature=params.temperature,
            top_p=params.top_p,
            tools=response_tools(body.tools),
        )
        self.items = OutputItems()
        self._saved = False  # a background response is stored before it runs, and replaced when done
        self.num_top = body.top_logprobs or 0

    def _logprobs(self, entries: list[Any] | None) -> None:
        if self.body.wants_logprobs and entries:
            self.items.add_logprobs(
                chat_logprobs(self.state.engine.tokenizer, entries, self.num_top)["content"]
            )

    def _finished(self, output: RequestOutput) -> tuple[dict[str, Any], TokenCounts]:
        """The response object once the reply is complete (its items closed)."""
        seq = output.outputs[0]
        self.timer.mark_end()
        self.state.metrics.observe_request(self.timer, [seq.finish_reason])
        counts = TokenCounts(len(output.prompt_token_ids), output.num_cached_tokens, len(seq.token_ids))
        incomplete = seq.finish_reason == "length"
        payload = response_object(
            self.settings,
            "incomplete" if incomplete else "completed",
            self.items.items,
            usage_dict=usage(counts, self._reasoning_tokens(seq)),
            incomplete_reason="max_output_tokens" if incomplete else None,
        )
        return payload, counts

    def _reasoning_tokens(self, seq: CompletionOutput) -> int:
        text = "".join(
            part["text"]
            for item in self.items.items
            if item["type"] == "reasoning"
            for part in item["content"]
        )
        return min(len(seq.token_ids), len(self.state.engine.tokenizer.encode(text))) if text else 0

    def whole(self, final: RequestOutput) -> tuple[dict[str, Any], TokenCounts]:
        seq = final.outputs[0]
        assert self.reader is not None
        reply = self.reader.stream()
        self._logprobs(seq.logprobs)
        self.items.feed([*reply.feed(seq.text), *reply.finish()])
        self.items.finish(incomplete=seq.finish_reason == "length")
        return self._finished(final)

    async def save(self, payload: dict[str, Any]) -> None:
        """Stores the response (with `store`); a background response's later states replace its first."""
        if not self.body.stores:
            return
        if self._saved:
            await asyncio.to_thread(self.store.replace, payload, payload["output"])
            return
        new_items = [*self.turn.new_items, *payload["output"]]
        await asyncio.to_thread(
            self.store.save, payload, self.turn.input_items, new_items, self.tenant.account
        )
        self._saved = True

    async def in_background(self, generation: Generation) -> dict[str, Any]:
        """Runs to the end with nobody waiting (background): the final response, stored. Cancelled (the cancel
        route), it is stored as cancelled; a failure is stored as failed."""
        try:
            (final,) = await collect_finals([generation], self.timer)
            if final.error:
                raise APIError(500, f"generation failed: {final.error}", code="generation_failed")
            payload, _ = self.whole(final)
        except asyncio.CancelledError:
            payload = response_object(self.settings, "cancelled", [])
            await asyncio.shield(self.save(payload))
            raise
        except Exception as error:  # noqa: BLE001 - the failure is the stored response's error
            message = as_api_error(error).message
            payload = response_object(
                self.settings, "failed", [], error={"code": "server_error", "message": message}
            )
        finally:
            await generation.close()
        await self.save(payload)
        return payload

    async def stream(self, generation: Generation, watch: DisconnectWatch) -> AsyncIterator[str]:
        obfuscate = (self.body.stream_options or {}).get("include_obfuscation", True) is not False
        number = 0

        def send(event: Event) -> str:
            nonlocal number
            payload = {**event, "sequence_number": number}
            if obfuscate and is_delta(event):
                payload["obfuscation"] = obfuscation(event["delta"])
            number += 1
            return sse_event(event["type"], payload)

        assert self.reader is not None
        reply = self.reader.stream()
        started = response_object(self.settings, "in_progress", [])
        yield send({"type": "response.created", "response": started})
        yield send({"type": "response.in_progress", "response": started})
        try:
            last = generation.first
            async with aclosing(generation.outputs()) as outputs:
                async for output in outputs:
                    if output.error:
                        raise APIError(500, f"generation failed: {output.error}", code="generation_failed")
                    last = output
                    seq = output.outputs[0]
                    self.timer.mark_tokens(len(seq.delta_token_ids))
                    self._logprobs(seq.delta_logprobs)
                    deltas = reply.feed(seq.delta_text)
                    if seq.finish_reason:
                        deltas += reply.finish()
                    for event in self.items.feed(deltas):
                        yield send(event)
            seq = last.outputs[0]
            for event in self.items.finish(incomplete=seq.finish_reason == "length"):
                yield send(event)
            payload, _ = self._finished(last)
            await self.save(payload)
            kind = "response.incomplete" if payload["status"] == "incomplete" else "response.completed"
            yield send({"type": kind, "response": payload})
        except Exception as error:  # noqa: BLE001 - headers are gone; the failure travels as an event
            api_error = as_api_error(error)
            failed = response_object(
                self.settings,
                "failed",
                self.items.items,
                error={"code": "server_error", "message": api_error.message},
            )
            try:
                await self.save(failed)
            except Exception:  # noqa: BLE001 - the client still hears of the failure
                logger.exception("could not store failed response %s", self.settings.id)
            yield send({"type": "response.failed", "response": failed})
        finally:
            watch.close()
            await generation.close()
