"""Tools on a template without tool support (the default model's SmolLM2 template) through the real openai and
anthropic SDKs, on a tiny random model: ember's generic format makes every required reply a schema-valid call,
streams add up to the whole reply, Anthropic gets tool_use blocks; continue_final_message and Anthropic's
prefill continue the final message in place."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest
from live_server import start_server
from tools_server import start_template_server

from ember.chat.continuation import continued_prompt
from ember.chat.template import ChatTemplate
from ember.engine.async_engine import AsyncEngine
from ember.engine.testing import default_tokenizer_and_template, tiny_engine_config, tiny_loaded_model
from ember.server.common.config import ServerConfig

MODEL = "tiny-smol"
TOKENIZER, SMOL_TEMPLATE = default_tokenizer_and_template()
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 8},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIMER = {
    "type": "object",
    "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 90}},
    "required": ["minutes"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "set_timer": TIMER}
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": schema}} for name, schema in SCHEMAS.items()
]
USER = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    assert SMOL_TEMPLATE is not None
    running = start_template_server(MODEL, SMOL_TEMPLATE)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0, timeout=120)


def assert_valid(name: str, arguments: str | dict[str, Any]) -> None:
    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(parsed, SCHEMAS[name])


@pytest.mark.parametrize("seed", range(4))
def test_every_required_reply_is_a_schema_valid_call_of_a_listed_tool(
    client: openai.OpenAI, seed: int
) -> None:
    chat = client.chat.completions.create(
        model=MODEL,
        messages=USER,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=seed % 2 == 0,
        max_tokens=120,
        temperature=1.0,
        seed=seed,
    )
    choice = chat.choices[0]
    calls = choice.message.tool_calls or []
    if choice.finish_reason == "length":  # a random model may list parallel calls until max_tokens
        assert seed % 2 == 0 and len(calls) > 1
        calls = calls[:-1]
    else:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert calls and (seed % 2 == 0 or len(calls) == 1)
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert_valid(call.function.name, call.function.arguments)


def test_a_named_choice_calls_that_tool(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL,
        messages=USER,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "set_timer"}},
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=1.0,
        seed=3,
    )
    (call,) = chat.choices[0].message.tool_calls or []
    assert call.function.name == "set_timer"
    assert_valid("set_timer", call.function.arguments)


def stream(client: openai.OpenAI, **request: Any) -> tuple[str, dict[int, dict[str, str]], str | None]:
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                entry["name"] += (delta.function and delta.function.name) or ""
                entry["arguments"] += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    return content, calls, finish


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_streamed_deltas_add_up_to_the_whole_reply(client: openai.OpenAI, choice: str) -> None:
    request = {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": choice, "max_tokens": 40, "temperature": 1.0, "seed": 11, "parallel_tool_calls": False}  # fmt: skip
    whole = client.chat.completions.create(**request).choices[0]  # type: ignore[call-overload]
    content, calls, finish = stream(client, **request)
    assert finish == whole.finish_reason
    assert content == (whole.message.content or "")
    expected = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []]
    assert [(c["name"], c["arguments"]) for c in calls.values()] == expected
    if choice == "auto":  # text or valid calls, never a broken call
        for name, arguments in expected:
            assert_valid(name, arguments)


@pytest.mark.parametrize("seed", range(2))
def test_the_call_threshold_decides_auto_per_request_and_the_stream_adds_up(
    client: openai.OpenAI, seed: int
) -> None:
    # A random model gives `<tool_call>` ~1/49k at the reply's start: threshold 0 calls, 1 answers in text.
    request = {"model": MODEL, "messages": USER, "tools": TOOLS, "max_tokens": 60, "temperature": 1.0, "seed": seed, "parallel_tool_calls": False}  # fmt: skip
    called = client.chat.completions.create(**request, extra_body={"tool_call_threshold": 0.0}).choices[0]  # type: ignore[call-overload]
    assert called.finish_reason == "tool_calls" and not called.message.content
    (call,) = called.message.tool_calls or []
    assert_valid(call.function.name, call.function.arguments)
    content, calls, finish = stream(client, **request, extra_body={"tool_call_threshold": 0.0})
    assert finish == "tool_calls" and content == ""
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (call.function.name, call.function.arguments)
    ]
    text = client.chat.completions.create(**request, extra_body={"tool_call_threshold": 1.0}).choices[0]  # type: ignore[call-overload]
    assert not text.message.tool_calls and text.message.content and not text.message.content.startswith("<")


def test_right_after_tool_results_the_first_token_does_not_open_a_call(client: openai.OpenAI) -> None:
    # Even at threshold 0: there the model's `<` is an echo of `<tool_response>` (docs/decisions.md).
    history = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees, snow"},
    ]  # fmt: skip
    reply = client.chat.completions.create(
        model=MODEL,
        messages=history,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=1.0,
        seed=5,
        extra_body={"tool_call_threshold": 0.0},
    ).choices[0]
    assert reply.message.content and not reply.message.content.startswith("<")


def test_a_call_threshold_outside_0_to_1_is_a_400_naming_it(server: Any) -> None:
    for path, body in [
        ("/v1/chat/completions", {"model": MODEL, "messages": USER, "tools": TOOLS, "max_tokens": 2}),
        ("/v1/messages", {"model": MODEL, "messages": USER, "max_tokens": 2, "tools": [{"name": "f", "input_schema": TIMER}]}),
    ]:  # fmt: skip
        response = httpx.post(f"{server.url}{path}", json={**body, "tool_call_threshold": 1.5}, timeout=60)
        assert response.status_code == 400, response.text
        assert "tool_call_threshold" in response.text
    assert httpx.get(f"{server.url}/health", timeout=60).status_code == 200


def test_tool_choice_none_and_a_tool_history_are_answered(client: openai.OpenAI, server: Any) -> None:
    history = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "7 degrees and rain"},
    ]  # fmt: skip
    for tool_choice in ("none", "auto"):
        chat = client.chat.completions.create(
            model=MODEL,
            messages=history,
            tools=TOOLS,
            tool_choice=tool_choice,
            max_tokens=4,  # type: ignore[arg-type]
        )
        assert chat.choices[0].finish_reason in ("stop", "length", "tool_calls")
    tokenized = httpx.post(f"{server.url}/v1/tokenize", json={"model": MODEL, "prompt": "x"}).json()
    assert tokenized["count"] >= 1  # the server still serves


def test_the_generic_format_can_be_refused_per_request(server: Any) -> None:
    body = {"model": MODEL, "messages": USER, "tools": TOOLS, "max_tokens": 2, "generic_tools": False}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "tools" and "generic tool format is turned off" in error["message"]


def test_the_server_option_refuses_the_generic_format_unless_a_request_asks_for_it() -> None:
    engine = AsyncEngine.from_loaded(tiny_loaded_model(), tiny_engine_config(max_model_len=1024))
    strict = start_server(engine, ServerConfig(model_name=MODEL, generic_tools=False))
    try:
        body = {"model": MODEL, "messages": USER, "tools": TOOLS, "max_tokens": 2}
        refused = httpx.post(f"{strict.url}/v1/chat/completions", json=body, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools"
        anthropic_body = {
            "model": MODEL,
            "messages": USER,
            "max_tokens": 2,
            "tools": [{"name": "f", "input_schema": TIMER}],
        }
        assert httpx.post(f"{strict.url}/v1/messages", json=anthropic_body, timeout=60).status_code == 400
        asked = httpx.post(
            f"{strict.url}/v1/chat/completions", json={**body, "generic_tools": True}, timeout=60
        )
        assert asked.status_code == 200, asked.text
    finally:
        strict.stop()


def test_the_server_threshold_applies_unless_a_request_sets_its_own() -> None:
    engine = AsyncEngine.from_loaded(tiny_loaded_model(), tiny_engine_config(max_model_len=1024))
    eager = start_server(engine, ServerConfig(model_name=MODEL, tool_call_threshold=0.0))
    try:
        claude = anthropic.Anthropic(base_url=eager.url, api_key="unused", max_retries=0, timeout=120)
        tools = [{"name": "set_timer", "input_schema": TIMER}]
        # Greedy and one call: a sampled random model may go on calling until max_tokens.
        one_call = {"type": "auto", "disable_parallel_tool_use": True}
        message = claude.messages.create(
            model=MODEL,
            max_tokens=80,
            messages=USER,  # type: ignore[arg-type]
            tools=tools,  # type: ignore[arg-type]
            tool_choice=one_call,  # type: ignore[arg-type]
            extra_body={"temperature": 0.0},
        )
        assert message.stop_reason == "tool_use"
        (block,) = [b for b in message.content if b.type == "tool_use"]
        assert_valid("set_timer", block.input)  # type: ignore[arg-type]
        texted = claude.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=USER,  # type: ignore[arg-type]
            tools=tools,  # type: ignore[arg-type]
            extra_body={"tool_call_threshold": 1.0},
        )
        assert texted.stop_reason != "tool_use" and [b.type for b in texted.content] == ["text"]
    finally:
        eager.stop()


def test_anthropic_tools_come_back_as_tool_use_blocks(server: Any) -> None:
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    tools = [{"name": name, "input_schema": schema} for name, schema in SCHEMAS.items()]
    choice = {"type": "any", "disable_parallel_tool_use": True}
    counted = claude.messages.count_tokens(model=MODEL, messages=USER, tools=tools, tool_choice=choice)  # type: ignore[arg-type]
    message = claude.messages.create(
        model=MODEL,
        max_tokens=80,
        messages=USER,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        tool_choice=choice,  # type: ignore[arg-type]
    )
    assert message.stop_reason == "tool_use" and message.usage.input_tokens == counted.input_tokens
    (block,) = [b for b in message.content if b.type == "tool_use"]
    assert block.id.startswith("toolu_")
    assert_valid(block.name, block.input)  # type: ignore[arg-type]


def continued_ids(messages: list[dict[str, Any]]) -> list[int]:
    assert SMOL_TEMPLATE is not None
    template = ChatTemplate(SMOL_TEMPLATE)
    prompt = continued_prompt(messages, lambda m: template.render(m, add_generation_prompt=False))
    return TOKENIZER.encode(prompt, add_special_tokens=False)  # type: ignore[attr-defined]


PREFILLED = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is"},
]


def test_continue_final_message_continues_in_place(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL,
        messages=PREFILLED,  # type: ignore[arg-type]
        max_tokens=3,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert chat.usage is not None and chat.usage.prompt_tokens == len(continued_ids(PREFILLED))
    implicit = client.chat.completions.create(
        model=MODEL,
        messages=PREFILLED,
        max_tokens=3,
        extra_body={"continue_final_message": True},  # type: ignore[arg-type]
    )
    assert implicit.usage is not None and implicit.usage.prompt_tokens == chat.usage.prompt_tokens


def test_anthropic_prefill_counts_in_input_tokens(server: Any) -> None:
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    message = claude.messages.create(model=MODEL, max_tokens=3, messages=PREFILLED)  # type: ignore[arg-type]
    assert message.usage.input_tokens == len(continued_ids(PREFILLED))
    counted = claude.messages.count_tokens(model=MODEL, messages=PREFILLED)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens


@pytest.mark.parametrize(
    ("path", "patch", "wording"),
    [
        ("/v1/chat/completions", {"continue_final_message": True, "add_generation_prompt": True}, "cannot both be true"),
        ("/v1/messages", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well, "}]}, "messages[1]: final assistant content cannot end with trailing whitespace"),
        ("/v1/messages", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "set_timer", "input": {}}]}]}, "messages[1]: a final assistant message (a prefill)"),
    ],
)  # fmt: skip
def test_continuations_that_cannot_be_are_400(
    server: Any, path: str, patch: dict[str, Any], wording: str
) -> None:
    body = {"model": MODEL, "messages": PREFILLED, "max_tokens": 2, **patch}
    response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert wording in error["message"] and error["type"] == "invalid_request_error"
    if path == "/v1/chat/completions":
        assert error["param"] == "continue_final_message"
