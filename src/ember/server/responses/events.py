"""A reply as Responses output items (reasoning, message, function_call), built from the chat pipeline's reply
deltas together with the typed stream events that describe each step: output_item.added, content_part.added,
output_text.delta / reasoning_text.delta / function_call_arguments.delta, their .done events, then
output_item.done. A whole (non-streamed) response is built by the same machine from the whole text, so a
stream's deltas always add up to the response it ends with."""

from __future__ import annotations

import copy
import secrets
import string
from typing import Any

from ember.chat.reply import ReplyDelta
from ember.server.responses.conversation import new_item_id

Event = dict[str, Any]  # without sequence_number: the stream numbers events as it sends them
_OBFUSCATION_ALPHABET = string.ascii_letters + string.digits
_DELTA_EVENTS = (
    "response.output_text.delta",
    "response.reasoning_text.delta",
    "response.function_call_arguments.delta",
)


def obfuscation(delta: str) -> str:
    """Random characters that pad a delta event to a size that does not reveal the token (OpenAI's
    stream_options.include_obfuscation, on by default)."""
    length = max(0, 16 - len(delta)) + secrets.randbelow(8)
    return "".join(secrets.choice(_OBFUSCATION_ALPHABET) for _ in range(length))


class OutputItems:
    """feed(reply deltas) -> events; finish(status) closes the open item. `items` are the output so far."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._open: str | None = None  # "reasoning" | "message" | "call:<index>"
        self.num_tool_calls = 0
        self._logprobs: list[dict[str, Any]] = []  # of the message text not yet sent

    @property
    def _index(self) -> int:
        return len(self.items) - 1

    def add_logprobs(self, entries: list[dict[str, Any]]) -> None:
        """Token logprobs (chat's `content` entries) for the message text: they ride on the next text delta."""
        self._logprobs += entries

    def feed(self, deltas: list[ReplyDelta]) -> list[Event]:
        events: list[Event] = []
        for delta in deltas:
            if delta.reasoning_content:
                self._logprobs = []  # the message text carries the logprobs of its own tokens only
                events += self._text("reasoning", delta.reasoning_content)
            elif delta.content:
                events += self._text("message", delta.content)
            elif delta.tool_call is not None:
                call = delta.tool_call
                self._logprobs = []
                if call.name is not None:
                    self.num_tool_calls += 1
                    item = {
                        "id": new_item_id("fc"),
                        "type": "function_call",
                        "status": "in_progress",
                        "call_id": call.id,
                        "name": call.name,
                        "arguments": "",
                    }
                    events += self._open_item(item, f"call:{call.index}")
                if call.arguments:
                    self.items[-1]["arguments"] += call.arguments
                    events.append(self._event("response.function_call_arguments.delta", delta=call.arguments))
        return events

    def finish(self, incomplete: bool) -> list[Event]:
        """Closes the last item (an empty message when the reply has no item at all); `incomplete`: the reply
        was cut off, so its items are too."""
        events = self._open_item(self._new_message(), "message") if not self.items else []
        self._logprobs = []  # of tokens after the last text (a tool call's): no text to attach them to
        return events + self._close(incomplete)

    # -- items ------------------------------------------------------------------------------------------

    def _new_message(self) -> dict[str, Any]:
        return {
            "id": new_item_id("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }

    def _text(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open != kind:
            if kind == "message":
                item = self._new_message()
            else:
                item = {"id": new_item_id("rs"), "type": "reasoning", "summary": [], "content": []}
            events += self._open_item(item, kind)
        part = self.items[-1]["content"][0]
        part["text"] += text
        if kind == "reasoning":
            events.append(self._event("response.reasoning_text.delta", content_index=0, delta=text))
        else:
            logprobs, self._logprobs = self._logprobs, []
            part.setdefault("logprobs", []).extend(logprobs)
            events.append(
                self._event("response.output_text.delta", content_index=0, delta=text, logprobs=logprobs)
            )
        return events

    def _open_item(self, item: dict[str, Any], key: str) -> list[Event]:
        events = self._close(False)
        self.items.append(item)
        self._open = key
        events.append(self._added(item))
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            events.append(
                self._event("response.content_part.added", content_index=0, part=copy.deepcopy(part))
            )
        elif item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": ""}
            item["content"].append(part)
            events.append(
                self._event("response.content_part.added", content_index=0, part=copy.deepcopy(part))
            )
        return events

    def _added(self, item: dict[str, Any]) -> Event:
        shown = copy.deepcopy(item)
        if shown["type"] in ("message", "reasoning"):
            shown["content"] = []
        return {"type": "response.output_item.added", "output_index": self._index, "item": shown}

    def _close(self, incomplete: bool) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        item = self.items[-1]
        events: list[Event] = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(
                self._event(
                    "response.output_text.done", content_index=0, text=part["text"], logprobs=part["logprobs"]
                )
            )
            events.append(
                self._event("response.content_part.done", content_index=0, part=copy.deepcopy(part))
            )
        elif item["type"] == "reasoning":
            part = item["content"][0]
            events.append(self._event("response.reasoning_text.done", content_index=0, text=part["text"]))
            events.append(
                self._event("response.content_part.done", content_index=0, part=copy.deepcopy(part))
            )
        else:
            events.append(self._event("response.function_call_arguments.done", arguments=item["arguments"]))
        if item["type"] != "reasoning":
            item["status"] = "incomplete" if incomplete else "completed"
        events.append(
            {"type": "response.output_item.done", "output_index": self._index, "item": copy.deepcopy(item)}
        )
        return events

    def _event(self, kind: str, **fields: Any) -> Event:
        return {"type": kind, "item_id": self.items[-1]["id"], "output_index": self._index, **fields}


def is_delta(event: Event) -> bool:
    return event["type"] in _DELTA_EVENTS


def output_text(items: list[dict[str, Any]]) -> str:
    """The SDK's `response.output_text`: the text of every output_text part."""
    return "".join(
        part["text"]
        for item in items
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
