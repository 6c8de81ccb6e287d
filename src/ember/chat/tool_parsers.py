"""Tool calls out of model text, per chat-template family, whole or streamed.

Families: Hermes / Qwen (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, repeated),
Llama-3 JSON (the reply is `{"name": ..., "parameters": {...}}`, calls separated by `;`), Mistral
(`[TOOL_CALLS][{...}, ...]`), and a plain fallback that returns the text as content. `parse(text)` is defined as the reassembly of the
streaming parser fed the whole text, so streamed deltas always reassemble into the non-streamed message.

Streaming: a call's name (with its id) is sent once complete, then `arguments` as raw fragments of the
model's text, whose concatenation is exactly the final arguments string. Text that turns out not to be a call (no name,
broken JSON before the arguments start) is returned as content: nothing the model wrote is dropped, except
whitespace at the end of the content. Markers must reach the parser: for Mistral, detokenize with
skip_special_tokens=False, since [TOOL_CALLS] is a special token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ember.structured.json_object_scanner import JsonObjectScanner
from ember.structured.tools import HERMES, LLAMA3_JSON, MISTRAL, ToolCallSyntax

_ARGUMENT_KEYS = ("arguments", "parameters")
_WHITESPACE = " \t\r\n"


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


class _CallStream:
    """One call object: the name once known, then argument fragments; `rejected` if it is no call at all."""

    def __init__(self, index: int, call_id: str, name_first: bool) -> None:
        self.index = index
        self.scanner = JsonObjectScanner()
        self.committed = False
        self.rejected = False
        self._id = call_id
        # Llama-3 replies are bare JSON: only {"name": ..., "parameters": ...} in that order is a call.
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
                (keys and keys[0] != "name") or (len(keys) > 1 and keys[1] not in _ARGUMENT_KEYS)
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
        return next((k for k in _ARGUMENT_KEYS if k in self.scanner.spans), None)

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


class _ContentGate:
    """Holds trailing whitespace until more content follows it: content ends without the whitespace that
    separated it from tool calls, and whitespace-only content is dropped."""

    def __init__(self) -> None:
        self._held = ""

    def push(self, text: str) -> str:
        buffer = self._held + text
        ready = buffer.rstrip(_WHITESPACE)
        self._held = buffer[len(ready) :]
        return ready


@dataclass
class _StreamState:
    pending: str = ""  # received text not yet attributed
    unattributed: str = ""  # structural text consumed since the last committed call (returned on fallback)
    call: _CallStream | None = None
    num_calls: int = 0
    mode: str = "text"
    out: list[ToolStreamDelta] = field(default_factory=list)


class ToolCallStream:
    """Streaming parser for one response: feed(delta) -> deltas; finish() once the text is complete."""

    def __init__(self, syntax: ToolCallSyntax | None, new_id: Callable[[], str]) -> None:
        self.syntax = syntax
        self._new_id = new_id
        self._gate = _ContentGate()
        self._s = _StreamState()
        self._finished = False

    def feed(self, delta: str) -> list[ToolStreamDelta]:
        if self._finished:
            raise ValueError("feed() after finish()")
        self._s.pending += delta
        self._run(final=False)
        return self._take()

    def finish(self) -> list[ToolStreamDelta]:
        if not self._finished:
            self._finished = True
            self._run(final=True)
        return self._take()

    # -- helpers shared by the families ------------------------------------------------------------------

    def _take(self) -> list[ToolStreamDelta]:
        out, self._s.out = self._s.out, []
        return out

    def _content(self, text: str) -> None:
        text = self._gate.push(text) if self.syntax is not None else text
        if text:
            self._s.out.append(ToolStreamDelta(content=text))

    def _start_call(self, name_first: bool) -> None:
        s = self._s
        s.call = _CallStream(s.num_calls, self._new_id(), name_first)
        s.mode = "call"

    def _advance_call(self, final: bool) -> str:
        """Feed pending text to the open call: "more" (needs text), "done" or "rejected"."""
        s = self._s
        assert s.call is not None
        call = s.call
        consumed, deltas = call.feed(s.pending)
        s.unattributed += s.pending[:consumed]
        s.pending = s.pending[consumed:]
        if final and not call.done and not call.rejected:
            deltas += call.finish()
        if call.committed:
            s.unattributed = ""
        s.out.extend(ToolStreamDelta(tool_call=d) for d in deltas)
        if call.rejected:
            self._content(s.unattributed)
            s.unattributed, s.call, s.mode = "", None, "text"
            return "rejected"
        if call.done:
            s.num_calls += 1
            s.call = None
            return "done"
        return "more"

    def _fallback(self) -> None:
        """Structural text that did not continue as expected: it is content after all."""
        s = self._s
        self._content(s.unattributed + s.pending)
        s.unattributed, s.pending, s.mode = "", "", "plain"

    def _emit_until(self, marker: str, final: bool) -> bool:
        """Content up to `marker` (consumed, kept as unattributed); False when the marker is not there yet.
        A tail that may be the marker's beginning waits for more text."""
        s = self._s
        found = s.pending.find(marker)
        if found >= 0:
            self._content(s.pending[:found])
            s.unattributed = marker
            s.pending = s.pending[found + len(marker) :]
            return True
        keep = 0 if final else _partial_suffix(s.pending, marker)
        self._content(s.pending[: len(s.pending) - keep])
        s.pending = s.pending[len(s.pending) - keep :]
        return False

    def _run(self, final: bool) -> None:
        """Plain fallback: everything is content."""
        self._content(self._s.pending)
        self._s.pending = ""


class _TaggedStream(ToolCallStream):
    """Hermes / Qwen: content, then <tool_call> {json} </tool_call> blocks. Small Qwen models often drop the
    tags and reply with the bare {"name": ..., "arguments": ...} object; a reply that opens with one is a
    call too (llama.cpp accepts the same)."""

    def __init__(self, syntax: ToolCallSyntax | None, new_id: Callable[[], str]) -> None:
        super().__init__(syntax, new_id)
        self._s.mode = "lead"

    def _run(self, final: bool) -> None:
        assert self.syntax is not None
        start, end = self.syntax.call_prefix.strip(), self.syntax.call_suffix.strip()
        s = self._s
        while True:
            if s.mode == "lead":
                lead = s.pending.lstrip(_WHITESPACE)
                if not lead and not final:
                    return
                if lead.startswith("{"):
                    s.unattributed, s.pending = s.pending[: len(s.pending) - len(lead)], lead
                    self._start_call(name_first=True)
                else:
                    s.mode = "text"
            elif s.mode in ("text", "plain"):
                if not self._emit_until(start, final):
                    return
                self._start_call(name_first=False)
            elif s.mode == "call":
                status = self._advance_call(final)
                if status == "more":
                    if final:
                        self._fallback()
                    return
                if status == "done":
                    s.mode = "after_call"
            elif s.mode == "after_call":
                tail = s.pending.lstrip(_WHITESPACE)
                if tail.startswith(end):
                    s.pending = tail[len(end) :]
                    s.unattributed, s.mode = "", "text"
                elif end.startswith(tail) and not final:
                    return
                else:
                    s.mode = "text"  # no closing tag: whatever follows is content


class _Llama3Stream(ToolCallStream):
    """Llama-3 JSON: the reply itself is {"name": ..., "parameters": {...}} (optionally after <|python_tag|>),
    calls separated by ';'. A reply that does not open that way is content."""

    _TAG = "<|python_tag|>"

    def _run(self, final: bool) -> None:
        s = self._s
        while True:
            if s.mode == "text":  # the reply's start
                lead = s.pending.lstrip(_WHITESPACE)
                if lead.startswith(self._TAG):
                    lead = lead[len(self._TAG) :].lstrip(_WHITESPACE)
                if not lead or (self._TAG.startswith(lead) and lead != self._TAG):
                    if final:
                        self._fallback()
                    return
                if lead[0] != "{":
                    s.mode = "plain"
                    continue
                s.unattributed, s.pending = s.pending[: len(s.pending) - len(lead)], lead
                self._start_call(name_first=True)
            elif s.mode == "call":
                status = self._advance_call(final)
                if status == "rejected":
                    s.mode = "plain"
                elif status == "more":
                    if final:
                        self._fallback()
                    return
                else:
                    s.mode = "between"
            elif s.mode == "between":
                rest = s.pending.lstrip(_WHITESPACE + ";")
                if rest.startswith("{"):
                    s.unattributed, s.pending = s.pending[: len(s.pending) - len(rest)], rest
                    self._start_call(name_first=True)
                elif rest:
                    s.mode = "plain"
                else:
                    return
            else:
                self._content(s.unattributed + s.pending)
                s.unattributed, s.pending = "", ""
                return


class _MistralStream(ToolCallStream):
    """Mistral: content, then [TOOL_CALLS] [ {json}, {json} ]."""

    _MARKER = "[TOOL_CALLS]"

    def _run(self, final: bool) -> None:
        s = self._s
        while True:
            if s.mode in ("text", "plain"):
                if not self._emit_until(self._MARKER, final):
                    return
                s.mode = "open"
            elif s.mode in ("open", "call_start", "after_call"):
                rest = s.pending.lstrip(_WHITESPACE)
                if not rest:
                    if final:
                        self._fallback()
                    return
                expected = {"open": "[", "call_start": "{]", "after_call": ",]"}[s.mode]
                if rest[0] not in expected:
                    self._fallback()
                    continue
                s.unattributed += s.pending[: len(s.pending) - len(rest)]
                s.pending = rest
                if rest[0] == "{":
                    self._start_call(name_first=False)
                    continue
                s.unattributed += rest[0]
                s.pending = rest[1:]
                s.mode = {"[": "call_start", ",": "call_start", "]": "text"}[rest[0]]
                if s.mode == "text":
                    s.unattributed = ""
            elif s.mode == "call":
                status = self._advance_call(final)
                if status == "more":
                    if final:
                        self._fallback()
                    return
                if status == "done":
                    s.mode = "after_call"


class ToolParser:
    """Parses one model family's tool calls; `syntax` None is the plain fallback (all text is content)."""

    def __init__(self, syntax: ToolCallSyntax | None, new_id: Callable[[], str] = new_tool_call_id) -> None:
        self.syntax = syntax
        self._new_id = new_id

    @property
    def family(self) -> str:
        return "plain" if self.syntax is None else self.syntax.family

    def stream(self) -> ToolCallStream:
        if self.syntax is None:
            return ToolCallStream(None, self._new_id)
        kind = {"hermes": _TaggedStream, "llama3_json": _Llama3Stream, "mistral": _MistralStream}
        return kind[self.syntax.family](self.syntax, self._new_id)

    def parse(self, text: str) -> ParsedToolCalls:
        stream = self.stream()
        return assemble([*stream.feed(text), *stream.finish()])


def parser_for_syntax(
    syntax: ToolCallSyntax | None, new_id: Callable[[], str] = new_tool_call_id
) -> ToolParser:
    return ToolParser(syntax, new_id)


def syntax_for_template(chat_template: str | None) -> ToolCallSyntax | None:
    """The tool-call family a chat template writes, from the markers it contains; None if it has none."""
    if not chat_template:
        return None
    if "<tool_call>" in chat_template:
        return HERMES
    if "[TOOL_CALLS]" in chat_template:
        return MISTRAL
    if "<|python_tag|>" in chat_template or ("<|eot_id|>" in chat_template and "tools" in chat_template):
        return LLAMA3_JSON
    return None


def parser_for_template(
    chat_template: str | None, new_id: Callable[[], str] = new_tool_call_id
) -> ToolParser:
    """The parser for the family a chat template writes; the plain fallback when it shows no tool markers."""
    return ToolParser(syntax_for_template(chat_template), new_id)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


def arguments_are_json(call: ToolCall) -> bool:
    """Whether a call's arguments parse as a JSON object (a truncated call's may not)."""
    try:
        return isinstance(json.loads(call.arguments), dict)
    except ValueError:
        return False


def messages_for_template(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Conversation messages as chat templates expect them back: assistant tool calls with `arguments`
    decoded from the API's JSON string into an object (templates apply `tojson` themselves), and
    `reasoning` accepted as the spelling of `reasoning_content`. ValueError names a malformed entry."""
    prepared: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        copy = dict(message)
        if "reasoning" in copy and "reasoning_content" not in copy:
            copy["reasoning_content"] = copy.pop("reasoning")
        calls = copy.get("tool_calls")
        if calls is not None:
            if copy.get("role") != "assistant" or not isinstance(calls, list):
                raise ValueError(f"messages[{i}].tool_calls must be a list on an assistant message")
            copy["tool_calls"] = [
                _decoded_call(call, f"messages[{i}].tool_calls[{j}]") for j, call in enumerate(calls)
            ]
        if copy.get("role") == "tool" and not isinstance(copy.get("tool_call_id", ""), str):
            raise ValueError(f"messages[{i}].tool_call_id must be a string")
        prepared.append(copy)
    return prepared


def _decoded_call(call: object, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError(f"{where}.function.name is required")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise ValueError(f"{where}.function.arguments is not valid JSON") from None
    return {**call, "function": {**function, "arguments": arguments}}
