"""A parsed reply in OpenAI's chat wire shapes: message tool_calls, stream deltas, finish reasons."""

from __future__ import annotations

from typing import Any

from ember.chat.reply import ReplyDelta
from ember.chat.tool_parsers import ToolCall
from ember.server.openai.responses import api_finish_reason


def tool_call_dict(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": call.type, "function": {"name": call.name, "arguments": call.arguments}}


def _delta_dict(delta: ReplyDelta) -> dict[str, Any]:
    """One reply delta in OpenAI's chunk form: a tool call's first delta names it, the rest add arguments."""
    if delta.reasoning_content:
        return {"reasoning_content": delta.reasoning_content}
    call = delta.tool_call
    if call is None:
        return {"content": delta.content}
    if call.name is not None:
        entry = {"index": call.index, "id": call.id, "type": "function"}
        return {"tool_calls": [{**entry, "function": {"name": call.name, "arguments": call.arguments}}]}
    return {"tool_calls": [{"index": call.index, "function": {"arguments": call.arguments}}]}


def coalesced_deltas(deltas: list[ReplyDelta]) -> list[dict[str, Any]]:
    """Chunk deltas with adjacent text of one kind, and adjacent argument fragments of one call, merged."""
    merged: list[dict[str, Any]] = []
    for delta in deltas:
        item = _delta_dict(delta)
        last = merged[-1] if merged else None
        if last is not None and last.keys() == item.keys() and "tool_calls" not in item:
            key = next(iter(item))
            last[key] += item[key]
        elif (
            last is not None
            and "tool_calls" in item
            and "tool_calls" in last
            and "id" not in item["tool_calls"][0]
            and "id" not in last["tool_calls"][0]
            and last["tool_calls"][0]["index"] == item["tool_calls"][0]["index"]
        ):
            last["tool_calls"][0]["function"]["arguments"] += item["tool_calls"][0]["function"]["arguments"]
        else:
            merged.append(item)
    return merged


def chat_finish_reason(engine_reason: str | None, num_tool_calls: int) -> str | None:
    reason = api_finish_reason(engine_reason)
    return "tool_calls" if num_tool_calls and reason == "stop" else reason
