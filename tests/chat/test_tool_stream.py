"""The shared tool-call stream machine: streamed in any pieces, a reply reads back as it does whole."""

from __future__ import annotations

import itertools

import pytest

from ember.chat.tool_parsers import ToolCall, assemble, parser_for_syntax
from ember.structured import HERMES, LLAMA3_JSON, MISTRAL, ToolCallSyntax

CALL = '{"name": "f", "arguments": {"a": 1}}'


def read(syntax: ToolCallSyntax, text: str, piece: int) -> tuple[str, list[ToolCall]]:
    counter = itertools.count()
    stream = parser_for_syntax(syntax, lambda: f"call_{next(counter)}").stream()
    deltas = [d for start in range(0, len(text), piece) for d in stream.feed(text[start : start + piece])]
    parsed = assemble(deltas + stream.finish())
    return parsed.content, parsed.tool_calls


@pytest.mark.parametrize(
    ("syntax", "text", "content", "num_calls"),
    [
        # Punctuation that breaks the list makes the rest content, but a later marker still opens calls.
        (MISTRAL, f"[TOOL_CALLS] no list [TOOL_CALLS][{CALL}]", "[TOOL_CALLS] no list", 1),
        (MISTRAL, f"[TOOL_CALLS][{CALL}}} x [TOOL_CALLS][{CALL}]", "} x", 2),
        (HERMES, f"{CALL} then <tool_call>{CALL}</tool_call>", " then", 2),
        (LLAMA3_JSON, f"<|python_tag|>{CALL}; {CALL};", "", 2),
    ],
)
def test_whole_and_streamed_agree(syntax: ToolCallSyntax, text: str, content: str, num_calls: int) -> None:
    whole = read(syntax, text, len(text))
    assert whole[0] == content and len(whole[1]) == num_calls
    for piece in (1, 2, 5):
        assert read(syntax, text, piece) == whole
