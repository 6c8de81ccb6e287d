"""Tool-call parsing per template family: fixture outputs, and streamed deltas that reassemble exactly."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable

import pytest

from ember.chat.template import ChatTemplate
from ember.chat.tool_parsers import (
    ParsedToolCalls,
    ToolCall,
    ToolStreamDelta,
    assemble,
    messages_for_template,
    parser_for_syntax,
    parser_for_template,
    syntax_for_template,
)
from ember.structured import HERMES, LLAMA3_JSON, MISTRAL, ToolCallSyntax


def counting_ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def stream_in_chunks(syntax: ToolCallSyntax | None, text: str, seed: int) -> list[ToolStreamDelta]:
    """Feed text in random 1-7 character pieces (seed 0: one character at a time)."""
    rng = random.Random(seed)
    stream = parser_for_syntax(syntax, counting_ids()).stream()
    deltas: list[ToolStreamDelta] = []
    position = 0
    while position < len(text):
        size = 1 if seed == 0 else rng.randint(1, 7)
        deltas += stream.feed(text[position : position + size])
        position += size
    return deltas + stream.finish()


WEATHER = '{"city": "Paris", "unit": "celsius"}'
FIXTURES: list[tuple[ToolCallSyntax | None, str, ParsedToolCalls]] = [
    (
        HERMES,
        f'Let me check.\n<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": [2, {"c": "}\\"]"}]}}\n</tool_call>',
        ParsedToolCalls(
            "Let me check.",
            [
                ToolCall("call_0", "get_weather", WEATHER),
                ToolCall("call_1", "add", '{"a": 1, "b": [2, {"c": "}\\"]"}]}'),
            ],
        ),
    ),
    (HERMES, "No tools needed: 4.", ParsedToolCalls("No tools needed: 4.", [])),
    (  # not a call object: the text stays, tags included
        HERMES,
        "I would use <tool_call>a hammer</tool_call> here",
        ParsedToolCalls("I would use <tool_call>a hammer</tool_call> here", []),
    ),
    (  # arguments first, name last; arguments given as a JSON string
        HERMES,
        '<tool_call>{"arguments": "{\\"x\\": 1}", "name": "f"}</tool_call>',
        ParsedToolCalls("", [ToolCall("call_0", "f", '{"x": 1}')]),
    ),
    (
        HERMES,
        '<tool_call>{"name": "ping"}</tool_call>',
        ParsedToolCalls("", [ToolCall("call_0", "ping", "{}")]),
    ),
    (  # Qwen2.5-Coder-0.5B answers a tool prompt with the bare object, without tags
        HERMES,
        '{"name": "get_weather", "arguments": ' + WEATHER + "}",
        ParsedToolCalls("", [ToolCall("call_0", "get_weather", WEATHER)]),
    ),
    (HERMES, '{"answer": 4} is plain JSON', ParsedToolCalls('{"answer": 4} is plain JSON', [])),
    (
        LLAMA3_JSON,
        '<|python_tag|>{"name": "get_weather", "parameters": '
        + WEATHER
        + '}; {"name": "now", "parameters": {}}',
        ParsedToolCalls("", [ToolCall("call_0", "get_weather", WEATHER), ToolCall("call_1", "now", "{}")]),
    ),
    (
        LLAMA3_JSON,
        '{"city": "Paris"} is JSON, not a call',
        ParsedToolCalls('{"city": "Paris"} is JSON, not a call', []),
    ),
    (LLAMA3_JSON, "The weather is fine.", ParsedToolCalls("The weather is fine.", [])),
    (
        MISTRAL,
        'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": '
        + WEATHER
        + '}, {"name": "now", "arguments": {}}]',
        ParsedToolCalls(
            "Sure.", [ToolCall("call_0", "get_weather", WEATHER), ToolCall("call_1", "now", "{}")]
        ),
    ),
    (
        MISTRAL,
        "[TOOL_CALLS] is not followed by a list",
        ParsedToolCalls("[TOOL_CALLS] is not followed by a list", []),
    ),
    (
        None,
        'Plain <tool_call>{"name": "x"}</tool_call>\n',
        ParsedToolCalls('Plain <tool_call>{"name": "x"}</tool_call>\n', []),
    ),
]


@pytest.mark.parametrize(("syntax", "text", "expected"), FIXTURES)
def test_fixture_outputs_parse(syntax: ToolCallSyntax | None, text: str, expected: ParsedToolCalls) -> None:
    parsed = parser_for_syntax(syntax, counting_ids()).parse(text)
    assert parsed == expected
    for call in parsed.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)


@pytest.mark.parametrize(("syntax", "text", "expected"), FIXTURES)
def test_streamed_deltas_reassemble_into_the_parsed_message(
    syntax: ToolCallSyntax | None, text: str, expected: ParsedToolCalls
) -> None:
    for seed in range(25):
        deltas = stream_in_chunks(syntax, text, seed)
        assert assemble(deltas) == expected
        seen: dict[int, list] = {}
        for delta in deltas:
            if delta.tool_call is not None:
                seen.setdefault(delta.tool_call.index, []).append(delta.tool_call)
        assert sorted(seen) == list(range(len(expected.tool_calls)))  # stable indices from 0
        for index, parts in seen.items():
            first, rest = parts[0], parts[1:]
            assert first.name == expected.tool_calls[index].name and first.id == f"call_{index}"
            assert all(part.name is None and part.id is None for part in rest)  # name first, then arguments


def test_arguments_stream_before_the_call_closes() -> None:
    stream = parser_for_syntax(HERMES, counting_ids()).stream()
    deltas = stream.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert [d.tool_call.name for d in deltas if d.tool_call and d.tool_call.name] == ["get_weather"]
    assert "".join(d.tool_call.arguments for d in deltas if d.tool_call) == '{"city": "Pa'
    rest = stream.feed('ris"}}\n</tool_call>') + stream.finish()
    assert "".join(d.tool_call.arguments for d in rest if d.tool_call) == 'ris"}'


def test_truncated_call_keeps_what_was_written() -> None:
    parsed = parser_for_syntax(HERMES, counting_ids()).parse(
        '<tool_call>\n{"name": "f", "arguments": {"a": [1, 2'
    )
    assert parsed.tool_calls == [ToolCall("call_0", "f", '{"a": [1, 2')]
    unnamed = parser_for_syntax(HERMES, counting_ids()).parse('Hi <tool_call>\n{"arguments": {"a": 1}')
    assert unnamed == ParsedToolCalls('Hi <tool_call>\n{"arguments": {"a": 1}', [])


QWEN_LIKE = """{%- if tools %}<|im_start|>system
# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each call return <tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
LLAMA3_LIKE = (
    "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>"
    "{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}"
)
MISTRAL_LIKE = (
    "{% for m in messages %}[INST]{{ m.content }}[/INST]{% endfor %}"
    "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
)
SMOLLM_LIKE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def test_family_is_chosen_from_the_template() -> None:
    assert syntax_for_template(QWEN_LIKE) == HERMES
    assert syntax_for_template(LLAMA3_LIKE) == LLAMA3_JSON
    assert syntax_for_template(MISTRAL_LIKE) == MISTRAL
    assert syntax_for_template(SMOLLM_LIKE) is None and syntax_for_template(None) is None
    assert parser_for_template(SMOLLM_LIKE).parse("<tool_call>x") == ParsedToolCalls("<tool_call>x", [])


def test_tools_render_through_the_template_and_calls_parse_back() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    prompt = ChatTemplate(QWEN_LIKE).render([{"role": "user", "content": "Weather?"}], tools=[tool])
    assert '"name": "get_weather"' in prompt and prompt.endswith("<|im_start|>assistant\n")
    reply = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    parsed = parser_for_template(QWEN_LIKE).parse(reply)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("get_weather", '{"city": "Oslo"}')]
    assert parsed.tool_calls[0].id.startswith("call_")


QWEN_LIKE_HISTORY = """{%- for message in messages %}<|im_start|>{{ message.role }}
{%- if message.content %}
{{ message.content }}{% endif %}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% endfor %}"""


def test_tool_calls_and_results_go_back_into_the_conversation() -> None:
    call = {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    messages = [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "tool_calls": [call], "reasoning": "use the tool"},
        {"role": "tool", "tool_call_id": "call_0", "content": "3"},
    ]
    prepared = messages_for_template(messages)
    assert prepared[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1, "b": 2}
    assert prepared[1]["reasoning_content"] == "use the tool" and "reasoning" not in prepared[1]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"a": 1, "b": 2}'  # input untouched
    prompt = ChatTemplate(QWEN_LIKE_HISTORY).render(prepared, add_generation_prompt=False)
    rendered_call = prompt.split("<tool_call>\n")[1].split("\n</tool_call>")[0]
    assert parser_for_syntax(HERMES).parse(f"<tool_call>{rendered_call}</tool_call>").tool_calls[
        0
    ].arguments == ('{"a": 1, "b": 2}')
    with pytest.raises(
        ValueError, match=r"messages\[1\].tool_calls\[0\].function.arguments is not valid JSON"
    ):
        messages_for_template(
            [
                messages[0],
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]},
            ]
        )
