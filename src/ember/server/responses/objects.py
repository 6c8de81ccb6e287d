"""The Response object (`"object": "response"`): the request's settings echoed back, its output items, status,
usage and errors; and the list object of GET /responses/{id}/input_items."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ember.server.common.errors import invalid_request
from ember.server.common.metrics import TokenCounts
from ember.server.responses.protocol import ResponsesRequest


@dataclass(frozen=True)
class ResponseSettings:
    """What a response object repeats of its request, resolved (the sampler's effective values)."""

    id: str
    model: str
    created_at: int
    body: ResponsesRequest
    temperature: float
    top_p: float
    tools: list[dict[str, Any]]  # the request's function tools, in the Responses shape


def response_tools(tools: list[Any] | None) -> list[dict[str, Any]]:
    """Function tools as a response lists them: strict defaults to true, as at OpenAI."""
    shown = []
    for tool in tools or []:
        shown.append(
            {
                "type": "function",
                "name": tool["name"],
                "description": tool.get("description"),
                "parameters": tool.get("parameters"),
                "strict": tool.get("strict", True) is not False,
            }
        )
    return shown


def usage(counts: TokenCounts, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": counts.prompt,
        "input_tokens_details": {"cached_tokens": counts.cached, "cache_write_tokens": 0},
        "output_tokens": counts.generated,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": counts.prompt + counts.generated,
    }


def response_object(
    settings: ResponseSettings,
    status: str,
    output: list[dict[str, Any]],
    *,
    usage_dict: dict[str, Any] | None = None,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body = settings.body
    text = body.text or {}
    reasoning = body.reasoning or {}
    return {
        "id": settings.id,
        "object": "response",
        "created_at": settings.created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "background": body.background is True,
        "error": error,
        "incomplete_details": None if incomplete_reason is None else {"reason": incomplete_reason},
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "model": settings.model,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "prompt_cache_key": body.prompt_cache_key,
        "prompt_cache_retention": body.prompt_cache_retention,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.safety_identifier,
        "service_tier": "default",
        "store": body.stores,
        "temperature": settings.temperature,
        "text": {
            "format": text.get("format") or {"type": "text"},
            "verbosity": text.get("verbosity") or "medium",
        },
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": settings.tools,
        "top_logprobs": body.top_logprobs or 0,
        "top_p": settings.top_p,
        "truncation": body.truncation or "disabled",
        "usage": usage_dict,
        "user": body.user,
        "metadata": body.metadata or {},
    }


def input_items_page(
    items: list[dict[str, Any]], after: str | None, before: str | None, limit: int, order: str
) -> dict[str, Any]:
    """One page of a response's input items, OpenAI's cursor list (`order` desc: newest first)."""
    if not 1 <= limit <= 100:
        raise invalid_request(f"limit must be between 1 and 100, got {limit}", param="limit")
    if order not in ("asc", "desc"):
        raise invalid_request(f"order must be 'asc' or 'desc', got {order!r}", param="order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [item.get("id") for item in ordered]
    start, end = 0, len(ordered)
    for name, cursor in (("after", after), ("before", before)):
        if cursor is None:
            continue
        if cursor not in ids:
            raise invalid_request(f"{name}: no input item with id {cursor!r} in this response", param=name)
        if name == "after":
            start = ids.index(cursor) + 1
        else:
            end = ids.index(cursor)
    window = ordered[start:end]
    page = window[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(window) > limit,
    }
