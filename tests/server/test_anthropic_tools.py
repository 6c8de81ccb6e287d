"""Anthropic /v1/messages with tools, tool_use / tool_result blocks and thinking, through the real anthropic
SDK: forced tool_use inputs validate, streamed blocks add up to the non-streamed message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from live_server import TINY_MODEL, RunningServer
from tools_server import HERMES_TEMPLATE, THINKING_TEMPLATE, start_template_server

from ember.chat.reasoning import ReasoningParser
from ember.chat.reply import ReplyReader
from ember.chat.template import ChatTemplate
from ember.chat.tool_parsers import ToolParser, messages_for_template
from ember.engine.testing import default_tokenizer_and_template
from ember.server.anthropic.content_blocks import BlockEvents, content_blocks
from ember.structured import HERMES

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [{"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER}]
USER = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def hermes() -> Iterator[RunningServer]:
    running = start_template_server("tiny-hermes", HERMES_TEMPLATE)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def thinker() -> Iterator[RunningServer]:
    running = start_template_server("tiny-thinker", THINKING_TEMPLATE)
    yield running
    running.stop()


def claude_for(server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("seed", range(4))
def test_tool_choice_any_yields_a_schema_valid_tool_use(hermes: RunningServer, seed: int) -> None:
    message = claude_for(hermes).messages.create(
        model="tiny-hermes",
        max_tokens=300,
        messages=USER,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "any" if seed % 2 else "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        extra_body={"temperature": 1.0},
    )  # fmt: skip
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_")
    jsonschema.validate(block.input, WEATHER)


def test_streamed_tool_use_matches_the_message(hermes: RunningServer) -> None:
    claude = claude_for(hermes)
    request: dict[str, Any] = {
        "model": "tiny-hermes",
        "max_tokens": 300,
        "messages": USER,
        "tools": TOOLS,
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "extra_body": {"temperature": 0},
    }
    whole = claude.messages.create(**request)
    partial_json = ""
    with claude.messages.stream(**request) as stream:
        for event in stream:
            if event.type == "content_block_start":
                assert event.content_block.type == "tool_use"  # no text or thinking before the call
            if event.type == "content_block_delta":
                assert event.delta.type == "input_json_delta"
                partial_json += event.delta.partial_json
        final = stream.get_final_message()
    assert [(b.name, b.input) for b in final.content] == [(b.name, b.input) for b in whole.content]
    assert json.loads(partial_json) == whole.content[0].input
    assert final.stop_reason == whole.stop_reason == "tool_use"
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_tool_use_and_tool_result_blocks_go_back_into_the_prompt(hermes: RunningServer) -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "unit": "celsius"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "7 degrees"}]},
            {"type": "text", "text": "And tomorrow?"},
        ]},
    ]  # fmt: skip
    claude = claude_for(hermes)
    counted = claude.messages.count_tokens(model="tiny-hermes", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    reply = claude.messages.create(model="tiny-hermes", max_tokens=3, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    chat = [
        USER[0],
        {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "7 degrees"},
        {"role": "user", "content": "And tomorrow?"},
    ]  # fmt: skip
    openai_tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "description": "Weather in a city"}}]  # fmt: skip
    prompt = ChatTemplate(HERMES_TEMPLATE).render(messages_for_template(chat), tools=openai_tools)
    tokenizer, _ = default_tokenizer_and_template()
    assert (
        counted.input_tokens
        == reply.usage.input_tokens
        == len(tokenizer.encode(prompt, add_special_tokens=False))
    )
    assert "<tool_response>\n7 degrees\n</tool_response>" in prompt


def test_thinking_streams_as_thinking_blocks(thinker: RunningServer) -> None:
    claude = claude_for(thinker)
    request: dict[str, Any] = {
        "model": "tiny-thinker",
        "max_tokens": 12,
        "messages": USER,
        "thinking": {"type": "enabled", "budget_tokens": 8},
        "extra_body": {"temperature": 0},
    }
    whole = claude.messages.create(**request)
    # The template opened <think> and a random model never closes it: all of the reply is thinking.
    assert whole.content[0].type == "thinking" and whole.content[0].thinking
    thinking = ""
    with claude.messages.stream(**request) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                thinking += event.delta.thinking
        final = stream.get_final_message()
    assert thinking == whole.content[0].thinking == final.content[0].thinking
    off = claude.messages.create(**{**request, "thinking": {"type": "disabled"}})
    assert off.content[0].type == "text" and off.usage.input_tokens > whole.usage.input_tokens


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "tools"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
        ({"thinking": {"type": "sometimes"}}, "thinking"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]}, "messages.0.content"),
    ],
)  # fmt: skip
def test_bad_anthropic_tool_requests_are_400(hermes: RunningServer, patch: dict, param: str) -> None:
    body = {"model": "tiny-hermes", "max_tokens": 2, "messages": USER, **patch}
    response = httpx.post(f"{hermes.url}/v1/messages", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_thinking_on_a_model_without_reasoning_is_400(tiny_server: RunningServer) -> None:
    body = {
        "model": TINY_MODEL,
        "max_tokens": 2,
        "messages": USER,
        "thinking": {"type": "enabled", "budget_tokens": 1},
    }
    response = httpx.post(f"{tiny_server.url}/v1/messages", json=body, timeout=30)
    assert response.status_code == 400 and "thinking" in response.json()["error"]["message"]


def test_block_events_add_up_to_the_content_blocks() -> None:
    text = '<think>\nWeather needs a tool.\n</think>\n\nLet me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}\n</tool_call>'  # fmt: skip

    def reader() -> ReplyReader:  # fresh ids per reader, so the whole and the streamed reply agree
        ids = iter(["toolu_a", "toolu_b"])
        return ReplyReader(ReasoningParser(), ToolParser(HERMES, lambda: next(ids)))

    expected = content_blocks(reader().parse(text))
    assert [b["type"] for b in expected] == ["thinking", "text", "tool_use", "tool_use"]
    blocks, stream = BlockEvents(), reader().stream()
    events = [e for char in text for e in blocks.events(stream.feed(char))]
    events += blocks.events(stream.finish()) + blocks.finish()
    rebuilt: list[dict[str, Any]] = []
    for event in events:
        payload = json.loads(event.split("data: ", 1)[1])
        if payload["type"] == "content_block_start":
            assert payload["index"] == len(rebuilt)
            rebuilt.append({**payload["content_block"], "partial_json": ""})
        elif payload["type"] == "content_block_delta":
            delta, block = payload["delta"], rebuilt[payload["index"]]
            key = {"thinking_delta": "thinking", "text_delta": "text", "input_json_delta": "partial_json"}[
                delta["type"]
            ]
            block[key] += delta[key]
    for block in rebuilt:
        partial = block.pop("partial_json")
        if block["type"] == "tool_use":
            block["input"] = json.loads(partial)
    assert rebuilt == expected
    assert sum(e.startswith("event: content_block_stop") for e in events) == len(expected)
