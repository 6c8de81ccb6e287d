"""One request of a batch, run through the live route's own code: its body checked by the route's pydantic
model, then the route's serving object answers it (ChatServing / CompletionServing / EmbeddingServing.answer:
the same preparation, engine requests and response), at the background priority, as the batch's owner.

An answer becomes the output line OpenAI writes (`{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}`); a refusal the same with the error's status and body, for the error file. A
cancelled batch's request in flight is aborted and stays pending; one the server could not take now (queue full,
shutting down) stays pending too and is retried (or resumed after a restart).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from ember.engine.engine_config import BACKGROUND_PRIORITY
from ember.engine.errors import EngineDeadError, QueueFullError
from ember.server.batches.store import LineRecord, LineUsage
from ember.server.common.errors import APIError, as_api_error, error_body
from ember.server.common.generation import ClientLeft, EngineWatch
from ember.server.common.protocol import validate_body
from ember.server.common.services import Services
from ember.server.common.tenancy import Tenant, enter_tenant, leave_tenant
from ember.server.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

BATCH_PRIORITY = BACKGROUND_PRIORITY  # below every live request (engine_config.SchedulerConfig)


@dataclass(frozen=True)
class LineOutcome:
    ok: bool  # a 2xx answer (output file) or not (error file)
    result: dict[str, Any]  # {"status_code", "request_id", "body"}
    usage: LineUsage


class NotNow(Exception):
    """The server cannot take the request now (queue full, shutting down): it stays pending."""


class LineRunner:
    def __init__(self, services: Services) -> None:
        self.services = services  # a line runs on the model its body names (Services.for_model)

    async def run(self, line: LineRecord, tenant: Tenant, cancelled: asyncio.Event) -> LineOutcome | None:
        """The request's outcome; None when the batch was cancelled first (the request stays pending).
        NotNow when the server cannot take it at the moment."""
        token = enter_tenant(tenant)  # which adapters the owner may use, as for its own HTTP requests
        try:
            payload = await self._answer(line, cancelled)
        except ClientLeft:
            return None
        except (QueueFullError, EngineDeadError) as error:  # ServerShuttingDownError is an EngineDeadError
            raise NotNow(str(error)) from error
        except Exception as error:  # noqa: BLE001 - a refusal or failure of this request is its error line
            api_error = as_api_error(error)
            if api_error.status in (429, 503):
                raise NotNow(api_error.message) from error
            return LineOutcome(
                False, _response(api_error.status, None, error_body(api_error, line.url)), LineUsage()
            )
        finally:
            leave_tenant(token)
        if cancelled.is_set() and _cut_short(payload):
            return None
        return LineOutcome(True, _response(200, payload.get("id"), payload), _usage(payload))

    async def _answer(self, line: LineRecord, cancelled: asyncio.Event) -> dict[str, Any]:
        if cancelled.is_set():
            raise ClientLeft()
        match line.url:
            case "/v1/chat/completions":
                chat = await asyncio.to_thread(validate_body, ChatCompletionRequest, line.body)
                async with self.services.for_model(chat.model) as served:
                    return await served.chat.answer(chat, _watch(cancelled, served))
            case "/v1/completions":
                completion = await asyncio.to_thread(validate_body, CompletionRequest, line.body)
                async with self.services.for_model(completion.model) as served:
                    return await served.completions.answer(completion, _watch(cancelled, served))
            case "/v1/embeddings":
                embedding = await asyncio.to_thread(validate_body, EmbeddingRequest, line.body)
                async with self.services.for_model(embedding.model) as served:
                    return await served.embeddings.answer(embedding, _watch(cancelled, served))
        raise APIError(400, f"url {line.url!r} cannot be batched", param="url")


def _watch(cancelled: asyncio.Event, served: Services) -> EngineWatch:
    return EngineWatch(cancelled.wait, served.state.engine, priority=BATCH_PRIORITY)


def output_line(line: LineRecord) -> dict[str, Any]:
    """The line of the output or error file for a request that ran."""
    return {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": line.custom_id,
        "response": line.result,
        "error": None,
    }


def unrun_line(line: LineRecord, code: str, message: str) -> dict[str, Any]:
    """The error file's line for a request that never ran (its batch was cancelled or expired first)."""
    return {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def _response(status: int, request_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
    return {"status_code": status, "request_id": request_id or f"req_{secrets.token_hex(12)}", "body": body}


def _usage(payload: dict[str, Any]) -> LineUsage:
    usage = payload.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return LineUsage(
        input_tokens=usage.get("prompt_tokens", 0),
        cached_tokens=details.get("cached_tokens", 0) or 0,
        output_tokens=usage.get("completion_tokens", 0) or 0,
    )


def _cut_short(payload: dict[str, Any]) -> bool:
    """Whether an answer that came back after a cancel was aborted part way."""
    return any(choice.get("finish_reason") == "abort" for choice in payload.get("choices", []))
