"""Tool calls as data: a parsed call, the deltas a streamed reply sends them as, and the incremental read of
one call object (its name once complete, then its arguments as raw fragments of the model's text)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ember.structured.json_object_scanner import JsonObjectScanner

ARGUMENT_KEYS = ("arguments", "parameters")


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON string, as the OpenAI API returns it
    type: str = "function"


@dataclass(frozen=True)
class ParsedToolCalls:
    content: str
    tool_calls: list[ToolCall]


@dataclass(frozen=True)
class ToolCallDelta:
    index: int  # stable per call, from 0
    id: str | None = None  # with the name, in the first delta of a call
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ToolStreamDelta:
    content: str = ""
    tool_call: ToolCallDelta | None = None


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def assemble(deltas: list[ToolStreamDelta]) -> ParsedToolCalls:
    """The message that a sequence of stream deltas adds up to."""
    content: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        content.append(delta.content)
        call = delta.tool_call
        if call is None:
            continue
        entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
        entry["id"] = call.id or entry["id"]
        entry["name"] = call.name or entry["name"]
        entry["arguments"] += call.arguments
    tool_calls = [ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]
    return ParsedToolCalls("".join(content), tool_calls)


class CallObjectStream:
    """One call object: the name once known, then argument fragments; `rejected` if it is no call at all."""

    def __init__(self, index: int, call_id: str, name_first: bool) -> None:
        self.index = index
        self.scanner = JsonObjectScanner()
        self.committed = False
        self.rejected = False
        self._id = call_id
        # Bare JSON replies (Llama-3): only {"name": ..., "parameters": ...} in that order is a call.
        self._name_first = name_first
        self._sent = 0  # raw argument characters sent

    @property
    def done(self) -> bool:
        return self.scanner.done or (self.committed and self.scanner.failed)

    def feed(self, text: str) -> tuple[int, list[ToolCallDelta]]:
        consumed = self.scanner.feed(text)
        return consumed, self._progress(final=False)

    def finish(self) -> list[ToolCallDelta]:
        return self._progress(final=True)

    def _progress(self, final: bool) -> list[ToolCallDelta]:
        scanner = self.scanner
        keys = scanner.keys
        if not self.committed:
            out_of_order = self._name_first and (
                (keys and keys[0] != "name") or (len(keys) > 1 and keys[1] not in ARGUMENT_KEYS)
            )
            name = scanner.string_value("name")
            name_closed = "name" in scanner.spans and scanner.spans["name"][1] is not None
            if (
                out_of_order
                or scanner.failed
                or (name_closed and name is None)
                or (scanner.done and name is None)
            ):
                self.rejected = True
                return []
            if name is None or not (self._arguments_key() is not None or scanner.done):
                return []
            self.committed = True
            deltas = [ToolCallDelta(self.index, id=self._id, name=name)]
        else:
            deltas = []
        fragment = self._arguments_fragment(final or scanner.done or scanner.failed)
        if fragment:
            deltas.append(ToolCallDelta(self.index, arguments=fragment))
        return deltas

    def _arguments_key(self) -> str | None:
        return next((k for k in ARGUMENT_KEYS if k in self.scanner.spans), None)

    def _arguments_fragment(self, ending: bool) -> str:
        key = self._arguments_key()
        if key is None:
            if ending and self._sent == 0:
                self._sent = 2
                return "{}"
            return ""
        start, end = self.scanner.spans[key]
        raw = self.scanner.raw
        if raw[start] == '"':  # arguments written as a JSON string: send the decoded string once, whole
            if end is None and not ending:
                return ""
            if self._sent:
                return ""
            self._sent = 1
            decoded = self.scanner.string_value(key)
            return decoded if decoded is not None else raw[start:]
        upto = end if end is not None else len(raw)
        fragment = raw[start + self._sent : upto]
        self._sent = upto - start
        return fragment
