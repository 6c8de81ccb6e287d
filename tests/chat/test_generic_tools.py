"""ember's generic tool format for templates without tool support: what the model is shown, how the chat plan
picks it (native formats first), the lazy and strict grammars it constrains with, and its parser."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from ember.chat.generic_tools import generic_messages, has_system_role, with_instruction
from ember.chat.plan import ChatInputs, ChatRequestError, plan_chat
from ember.chat.tool_parsers import ToolParser, messages_for_template
from ember.engine.testing import default_tokenizer_and_template
from ember.server.common.prompts import PromptEncoder
from ember.structured import GENERIC, HERMES
from ember.structured.compiler import GrammarCompiler

TOKENIZER, SMOL_TEMPLATE = default_tokenizer_and_template()
NO_SYSTEM_ROLE = (  # Gemma-like: refuses a system message
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
HERMES_LIKE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>"
    "{{ c.function | tojson }}</tool_call>{% endfor %}</{{ m.role }}>{% endfor %}"
)
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather now", "parameters": CITY},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": CITY}},
]
USER = [{"role": "user", "content": "Weather in Oslo?"}]
HISTORY = [
    {"role": "user", "content": "Weather and time in Oslo?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'}},
        ],
    },
    {"role": "tool", "tool_call_id": "a", "content": "7 degrees"},
    {"role": "tool", "tool_call_id": "b", "content": "14:05"},
]  # fmt: skip


def encoder(template: str | None) -> PromptEncoder:
    return PromptEncoder(TOKENIZER, TOKENIZER.vocab_size, template)  # type: ignore[arg-type]


def test_past_calls_and_results_become_plain_turns() -> None:
    converted = generic_messages(messages_for_template(HISTORY))
    assert converted == [
        HISTORY[0],
        {
            "role": "assistant",
            "content": 'Checking.\n<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
            '{"name": "get_time", "arguments": {"city": "Oslo"}}]</tool_call>',
        },
        {
            "role": "user",
            "content": "<tool_response>\n7 degrees\n</tool_response>\n<tool_response>\n14:05\n</tool_response>",
        },
    ]


def test_the_instruction_joins_the_system_message_or_the_first_user_turn() -> None:
    assert SMOL_TEMPLATE is not None
    system = [{"role": "system", "content": "Be brief."}, *USER]
    assert with_instruction(system, "TOOLS", SMOL_TEMPLATE)[0] == {
        "role": "system",
        "content": "Be brief.\n\nTOOLS",
    }
    assert with_instruction(USER, "TOOLS", SMOL_TEMPLATE) == [{"role": "system", "content": "TOOLS"}, *USER]
    assert has_system_role(SMOL_TEMPLATE) and not has_system_role(NO_SYSTEM_ROLE)
    assert with_instruction(USER, "TOOLS", NO_SYSTEM_ROLE) == [
        {"role": "user", "content": "TOOLS\n\nWeather in Oslo?"}
    ]


def test_the_default_template_gets_the_tools_and_the_history_in_its_prompt() -> None:
    plan = plan_chat(
        encoder(SMOL_TEMPLATE), ChatInputs([*HISTORY, {"role": "user", "content": "And Bergen?"}], TOOLS)
    )
    prompt = plan.prompt
    assert prompt.startswith("<|im_start|>system\nYou are an expert in composing functions.")
    assert "one or more function/tool calls" in prompt and "\n<tools>\n" in prompt
    assert json.dumps({"name": "get_weather", "description": "Weather now", "parameters": CITY}) in prompt
    assert '{"name": "get_time", "parameters": ' in prompt
    assert '<|im_start|>assistant\nChecking.\n<tool_call>[{"name": "get_weather"' in prompt
    assert "<|im_start|>user\n<tool_response>\n7 degrees\n</tool_response>" in prompt
    assert "<|im_start|>tool" not in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert plan.reader.tools is not None and plan.reader.tools.syntax == GENERIC
    assert plan.structured is not None and "TEXT_THEN_TRIGGER" in plan.structured.source  # lazy under auto


def test_a_schema_sent_in_another_key_order_renders_the_same_prompt() -> None:
    # LangChain's bind_tools sends properties, required, type; the OpenAI docs type, properties, required
    nested = {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}
    docs = {
        "type": "object",
        "properties": {"unit": {"type": "string"}, "tags": nested},
        "required": ["unit"],
    }
    shuffled = {
        "required": ["unit"],
        "properties": {"unit": {"type": "string"}, "tags": {"items": {"enum": ["a", "b"], "type": "string"}, "type": "array"}},
        "type": "object",
    }  # fmt: skip
    smol = encoder(SMOL_TEMPLATE)
    plans = [
        plan_chat(
            smol, ChatInputs(USER, [{"type": "function", "function": {"name": "f", "parameters": schema}}])
        )
        for schema in (docs, shuffled)
    ]
    assert plans[0].prompt == plans[1].prompt
    assert '"parameters": {"type": "object", "properties": {"unit": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string", "enum"' in plans[0].prompt  # fmt: skip


def test_required_and_named_choices_are_strict_and_none_shows_no_tools() -> None:
    smol = encoder(SMOL_TEMPLATE)
    required = plan_chat(smol, ChatInputs(USER, TOOLS, tool_choice="required"))
    assert required.structured is not None and required.structured.source.startswith(
        'start: "<tool_call>" calls'
    )
    named = plan_chat(smol, ChatInputs(USER, TOOLS, {"type": "function", "function": {"name": "get_time"}}))
    assert "Call the tool get_time now" in named.prompt
    assert named.structured is not None and '"const": "get_time"' in named.structured.source
    assert '"const": "get_weather"' not in named.structured.source
    none = plan_chat(smol, ChatInputs(HISTORY, TOOLS, tool_choice="none"))
    assert "<tools>" not in none.prompt and "<tool_response>\n7 degrees" in none.prompt
    assert none.structured is None and none.reader.tools is None


def test_one_call_at_most_without_parallel_tool_calls() -> None:
    plan = plan_chat(encoder(SMOL_TEMPLATE), ChatInputs(USER, TOOLS, "required", parallel_tool_calls=False))
    assert plan.structured is not None and '"," (" " | "\\n") call' not in plan.structured.source
    assert "several" not in plan.prompt
    auto = plan_chat(encoder(SMOL_TEMPLATE), ChatInputs(USER, TOOLS, parallel_tool_calls=False))
    assert "make one function/tool call" in auto.prompt


def test_a_native_tool_template_keeps_its_own_format() -> None:
    plan = plan_chat(encoder(HERMES_LIKE), ChatInputs(USER, TOOLS))
    assert plan.reader.tools is not None and plan.reader.tools.syntax == HERMES
    assert plan.prompt.startswith("<tools>") and "You can use these tools" not in plan.prompt


def test_the_generic_format_can_be_turned_off() -> None:
    with pytest.raises(ChatRequestError, match="does not support tool calling") as caught:
        plan_chat(encoder(SMOL_TEMPLATE), ChatInputs(USER, TOOLS, generic_tools=False))
    assert caught.value.param == "tools"
    off = plan_chat(encoder(SMOL_TEMPLATE), ChatInputs(USER, generic_tools=False))  # no tools: unaffected
    assert off.reader.tools is None


def grammar_accepts(source_text: str, plan_source: Any) -> bool:
    compiler = GrammarCompiler(TOKENIZER, [TOKENIZER.eos_token_id])  # type: ignore[arg-type]
    matcher = compiler.matcher(plan_source)
    for token in TOKENIZER.encode(source_text, add_special_tokens=False):  # type: ignore[attr-defined]
        try:
            matcher.accept(token)
        except ValueError:
            return False
    return matcher.is_accepting


CALL = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]</tool_call>'
TWO_CALLS = (
    '<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Oslo"}},\n'
    '{"name": "get_time", "arguments": {"city": "Oslo"}}\n]</tool_call>'
)


@pytest.mark.parametrize(
    ("reply", "auto", "required"),
    [
        ("It is sunny < 3 days a week.", True, False),
        ("", True, False),
        (CALL, True, True),
        ("Let me check. " + CALL, True, False),
        (TWO_CALLS, True, True),
        ('<tool_call>[{"name": "get_news", "arguments": {}}]</tool_call>', False, False),
        ('<tool_call>[{"name": "get_weather", "arguments": {"town": "Oslo"}}]</tool_call>', False, False),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', False, False),
        (CALL + " Done.", False, False),
    ],
)  # fmt: skip
def test_the_lazy_grammar_constrains_only_after_the_trigger(reply: str, auto: bool, required: bool) -> None:
    smol = encoder(SMOL_TEMPLATE)
    lazy = plan_chat(smol, ChatInputs(USER, TOOLS)).structured
    strict = plan_chat(smol, ChatInputs(USER, TOOLS, "required")).structured
    assert grammar_accepts(reply, lazy) is auto
    assert grammar_accepts(reply, strict) is required


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Let me check. " + TWO_CALLS, "Let me check.", [("get_weather", '{"city": "Oslo"}'), ("get_time", '{"city": "Oslo"}')]),
        ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]', "", [("get_weather", '{"city": "Oslo"}')]),
        ("Plain text.", "Plain text.", []),
        ('<tool_call>{"name": "x"}</tool_call>', '<tool_call>{"name": "x"}</tool_call>', []),
    ],
)  # fmt: skip
def test_the_parser_reads_calls_back_whole_and_streamed(
    text: str, content: str, calls: list[tuple[str, str]]
) -> None:
    counter = itertools.count()
    parser = ToolParser(GENERIC, lambda: f"call_{next(counter)}")
    whole = parser.parse(text)
    assert whole.content == content and [(c.name, c.arguments) for c in whole.tool_calls] == calls
    for size in (1, 3, 7):
        stream = parser.stream()
        deltas = [d for i in range(0, len(text), size) for d in stream.feed(text[i : i + size])]
        deltas += stream.finish()
        assert "".join(d.content for d in deltas) == content
        arguments: dict[int, str] = {}
        for delta in deltas:
            if delta.tool_call is not None:
                arguments[delta.tool_call.index] = (
                    arguments.get(delta.tool_call.index, "") + delta.tool_call.arguments
                )
        assert list(arguments.values()) == [a for _, a in calls]
