"""Tool calls out of model text, per chat-template family, whole or streamed.

Families: Hermes / Qwen (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, repeated),
Llama-3 JSON (the reply is `{"name": ..., "parameters": {...}}`, calls separated by `;`), Mistral
(`[TOOL_CALLS][{...}, ...]`), ember's generic format for templates without tool support
(`<tool_call>[{...}, ...]</tool_call>`, chat/generic_tools.py), and a plain fallback that returns the text as
content. Each family is a few
parameters of the one streaming machine (tool_stream.py). `parse(text)` is defined as the reassembly of the
streaming parser fed the whole text, so streamed deltas always reassemble into the non-streamed message.

Streaming: a call's name (with its id) is sent once complete, then `arguments` as raw fragments of the
model's text, whose concatenation is exactly the final arguments string. Text that turns out not to be a call
(no name, broken JSON before the arguments start) is returned as content: nothing the model wrote is dropped,
except whitespace at the end of the content and separators after the last call. Markers must reach the
parser: for Mistral, detokenize with skip_special_tokens=False, since [TOOL_CALLS] is a special token.

This module is the public face of tool calling; the data types come from tool_calls.py (re-exported here).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ember.chat.tool_calls import (
    ParsedToolCalls,
    ToolCall,
    ToolCallDelta,
    ToolStreamDelta,
    assemble,
    new_tool_call_id,
)
from ember.chat.tool_stream import AFTER_CALL, CALL, TEXT, WHITESPACE, ToolCallStream, ToolFamily
from ember.structured.limits import json_depth
from ember.structured.tools import GENERIC, GENERIC_TRIGGER, HERMES, LLAMA3_JSON, MISTRAL, ToolCallSyntax

MAX_ARGUMENTS_DEPTH = 256  # a past call's arguments go through the template's tojson, which recurses

__all__ = [
    "ParsedToolCalls",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStream",
    "ToolParser",
    "ToolStreamDelta",
    "arguments_are_json",
    "assemble",
    "messages_for_template",
    "new_tool_call_id",
    "parser_for_syntax",
    "parser_for_template",
    "syntax_for_template",
]

# Hermes / Qwen: content, then <tool_call> {json} </tool_call> blocks. Small Qwen models often drop the tags
# and reply with the bare {"name": ..., "arguments": ...} object; a reply that opens with one is a call too
# (llama.cpp accepts the same).
HERMES_FAMILY = ToolFamily(
    HERMES,
    marker=HERMES.call_prefix.strip(),
    bare_lead=True,
    punctuation={AFTER_CALL: {HERMES.call_suffix.strip(): TEXT}},
)
# Llama-3 JSON: the reply itself is {"name": ..., "parameters": {...}} (optionally after <|python_tag|>), calls
# separated by ';'. A reply that does not open that way is content.
LLAMA3_FAMILY = ToolFamily(
    LLAMA3_JSON,
    bare_lead=True,
    lead_tag="<|python_tag|>",
    name_first=True,
    skip=WHITESPACE + ";",
    punctuation={AFTER_CALL: {"{": CALL}},
)
# Mistral: content, then [TOOL_CALLS] [ {json}, {json} ].
MISTRAL_FAMILY = ToolFamily(
    MISTRAL,
    marker="[TOOL_CALLS]",
    after_marker="open",
    punctuation={
        "open": {"[": "call_start"},
        "call_start": {"{": CALL, "]": TEXT},
        AFTER_CALL: {",": "call_start", "]": TEXT},
    },
)
# Generic: content, then <tool_call> [ {json}, {json} ] </tool_call>. A reply cut before the closing tag still
# has its calls.
GENERIC_FAMILY = ToolFamily(
    GENERIC,
    marker=GENERIC_TRIGGER,
    after_marker="open",
    punctuation={
        "open": {"[": "call_start"},
        "call_start": {"{": CALL, "]": "close"},
        AFTER_CALL: {",": "call_start", "]": "close"},
        "close": {GENERIC.list_suffix[1:]: TEXT},
    },
    ends=frozenset({AFTER_CALL, "close"}),
)
PLAIN_FAMILY = ToolFamily(None)
_FAMILIES = {
    family.syntax.family: family
    for family in (HERMES_FAMILY, LLAMA3_FAMILY, MISTRAL_FAMILY, GENERIC_FAMILY)
    if family.syntax is not None
}


class ToolParser:
    """Parses one model family's tool calls; `syntax` None is the plain fallback (all text is content)."""

    def __init__(self, syntax: ToolCallSyntax | None, new_id: Callable[[], str] = new_tool_call_id) -> None:
        self.syntax = syntax
        self._new_id = new_id

    @property
    def family(self) -> str:
        return "plain" if self.syntax is None else self.syntax.family

    def stream(self) -> ToolCallStream:
        family = PLAIN_FAMILY if self.syntax is None else _FAMILIES[self.syntax.family]
        return ToolCallStream(family, self._new_id)

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
        except (ValueError, RecursionError):
            raise ValueError(f"{where}.function.arguments is not valid JSON (or nested too deeply)") from None
    if json_depth(arguments) > MAX_ARGUMENTS_DEPTH:
        raise ValueError(f"{where}.function.arguments nests more than {MAX_ARGUMENTS_DEPTH} levels deep")
    return {**call, "function": {**function, "arguments": arguments}}
