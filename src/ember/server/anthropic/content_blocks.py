"""A parsed reply as Anthropic content blocks: thinking, text and tool_use, whole or as stream events
(content_block_start / content_block_delta / content_block_stop with thinking_delta, text_delta and
input_json_delta)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from ember.chat.reply import ParsedReply, ReplyDelta
from ember.server.common.sse import sse_event


def new_tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the tool_use input object; a call cut off by max_tokens keeps an empty input."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def content_blocks(reply: ParsedReply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.reasoning_content is not None:
        blocks.append({"type": "thinking", "thinking": reply.reasoning_content, "signature": ""})
    if reply.content or not reply.tool_calls:
        blocks.append({"type": "text", "text": reply.content})
    for call in reply.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call.arguments)}
        )
    return blocks


_EMPTY_BLOCKS: dict[str, dict[str, Any]] = {
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
    "text": {"type": "text", "text": ""},
}


class BlockEvents:
    """Turns reply deltas into the stream's block events; each new kind of part opens a new block."""

    def __init__(self) -> None:
        self._index = -1
        self._open: str | None = None  # "thinking" | "text" | "tool_use:<call index>"
        self.num_tool_calls = 0

    def open(self, block: dict[str, Any], key: str) -> list[str]:
        events = self.close()
        self._index += 1
        self._open = key
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return [*events, sse_event("content_block_start", start)]

    def close(self) -> list[str]:
        if self._open is None:
            return []
        self._open = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def finish(self) -> list[str]:
        """Closes the last block; a reply with no block at all still gets an empty text block."""
        events = self.open(dict(_EMPTY_BLOCKS["text"]), "text") if self._index < 0 else []
        return events + self.close()

    def events(self, deltas: list[ReplyDelta]) -> list[str]:
        out: list[str] = []
        for delta in deltas:
            if delta.reasoning_content:
                out += self._text_like(
                    "thinking", {"type": "thinking_delta", "thinking": delta.reasoning_content}
                )
            elif delta.content:
                out += self._text_like("text", {"type": "text_delta", "text": delta.content})
            elif delta.tool_call is not None:
                call = delta.tool_call
                if call.name is not None:
                    self.num_tool_calls += 1
                    block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
                    out += self.open(block, f"tool_use:{call.index}")
                if call.arguments:
                    out.append(self._delta({"type": "input_json_delta", "partial_json": call.arguments}))
        return out

    def _text_like(self, kind: str, delta: dict[str, Any]) -> list[str]:
        events = [] if self._open == kind else self.open(dict(_EMPTY_BLOCKS[kind]), kind)
        return [*events, self._delta(delta)]

    def _delta(self, delta: dict[str, Any]) -> str:
        return sse_event(
            "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )
