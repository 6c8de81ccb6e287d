"""tools / tool_choice through /v1/chat/completions with the real openai SDK: forced calls validate against
their schemas, streamed calls reassemble into the non-streamed message, tool results go back in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from live_server import RunningServer
from tools_server import HERMES_TEMPLATE, start_template_server

from ember.chat.reasoning import ReasoningParser
from ember.chat.reply import ReplyReader
from ember.chat.template import ChatTemplate
from ember.chat.tool_parsers import ToolParser, messages_for_template
from ember.engine.testing import default_tokenizer_and_template
from ember.server.openai.chat_deltas import coalesced_deltas, tool_call_dict
from ember.structured import HERMES

MODEL = "tiny-hermes"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ORDER = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "maxLength": 6}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
        "express": {"type": "boolean"},
    },
    "required": ["items", "express"],
    "additionalProperties": False,
}  # fmt: skip
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "place_order", "parameters": ORDER}},
]
SCHEMAS = {"get_weather": WEATHER, "place_order": ORDER}
USER = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_template_server(MODEL, HERMES_TEMPLATE)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0, timeout=60)


def assert_valid_calls(calls: list[Any]) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", range(6))
def test_tool_choice_required_always_yields_schema_valid_arguments(client: openai.OpenAI, seed: int) -> None:
    chat = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=TOOLS,
        tool_choice="required" if seed % 2 else "any",  # type: ignore[arg-type]
        parallel_tool_calls=False,
        max_tokens=300,
        temperature=1.0,
        seed=seed,
    )
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    assert_valid_calls(choice.message.tool_calls)


def test_named_tool_choice_calls_that_function(client: openai.OpenAI) -> None:
    for seed in range(3):
        chat = client.chat.completions.create(
            model=MODEL,
            messages=USER,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "place_order"}},
            max_tokens=300,
            temperature=1.0,
            seed=seed,
        )
        calls = chat.choices[0].message.tool_calls
        assert calls, chat.choices[0].message  # an empty list would pass the name check below vacuously
        assert [c.function.name for c in calls] == ["place_order"] * len(calls)
        if chat.choices[0].finish_reason == "tool_calls":  # parallel calls may run into max_tokens
            assert_valid_calls(calls)


def stream_message(client: openai.OpenAI, **request: Any) -> tuple[dict[str, Any], list[Any]]:
    """The message a stream adds up to (as an OpenAI client accumulates it), and the raw chunks."""
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request)
    )
    content, calls, finish = "", {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            if delta.id is not None:  # the first delta of a call names it, before any argument
                assert delta.index not in calls and delta.function.name
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
                assert not delta.function.arguments
            else:
                assert delta.function.name is None
                calls[delta.index]["arguments"] += delta.function.arguments
        finish = choice.finish_reason or finish
    ordered = [calls[i] for i in sorted(calls)]
    return {"content": content, "tool_calls": ordered, "finish_reason": finish}, chunks


def test_streamed_tool_calls_reassemble_into_the_non_streamed_message(client: openai.OpenAI) -> None:
    request = {
        "model": MODEL,
        "messages": USER,
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 300,
        "temperature": 0.0,
    }
    whole = client.chat.completions.create(**request).choices[0]  # type: ignore[call-overload]
    streamed, chunks = stream_message(client, **request)
    assert streamed["finish_reason"] == whole.finish_reason
    expected = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert [(c["name"], c["arguments"]) for c in streamed["tool_calls"]] == expected
    assert list(range(len(expected))) == sorted(
        {d.index for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or []}
    )
    assert all(c["id"].startswith("call_") for c in streamed["tool_calls"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0  # fmt: skip


def test_tool_choice_auto_and_none_answer_with_text_or_calls(client: openai.OpenAI) -> None:
    auto = client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, max_tokens=8, temperature=0
    )
    none = client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, tool_choice="none", max_tokens=8, temperature=0
    )
    bare = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8, temperature=0)
    # A random model writes no call by itself: its text comes back as content, nothing dropped.
    assert auto.choices[0].message.tool_calls is None and auto.choices[0].message.content
    assert none.choices[0].message.content == auto.choices[0].message.content
    assert (
        none.usage.prompt_tokens == auto.usage.prompt_tokens > bare.usage.prompt_tokens + 50
    )  # tools rendered


def test_auto_with_a_json_schema_answers_with_a_call_or_valid_json(client: openai.OpenAI) -> None:
    answer_schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}  # fmt: skip
    for seed in range(3):
        chat = client.chat.completions.create(
            model=MODEL,
            messages=USER,
            tools=TOOLS,
            parallel_tool_calls=False,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": answer_schema},
            },
            max_tokens=300,
            temperature=1.0,
            seed=seed,
        )
        message = chat.choices[0].message
        if message.tool_calls:
            assert_valid_calls(message.tool_calls)
        else:
            jsonschema.validate(json.loads(message.content), answer_schema)


def test_tool_calls_and_results_round_trip_through_the_template(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}  # fmt: skip
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 7}'},
    ]
    chat = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=4)  # type: ignore[arg-type]
    tokenizer, _ = default_tokenizer_and_template()
    expected = ChatTemplate(HERMES_TEMPLATE).render(
        messages_for_template([{**m, "content": m["content"] or ""} for m in messages]), tools=TOOLS
    )
    assert '"arguments": {"city": "Oslo", "unit": "celsius"}' in expected and "<tool_response>" in expected
    assert chat.usage.prompt_tokens == len(tokenizer.encode(expected, add_special_tokens=False))


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"tools": [{"type": "function", "function": {"parameters": WEATHER}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}}}]}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]}, "messages[0].tool_calls[0].function.arguments"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_400_naming_the_parameter(
    server: RunningServer, patch: dict, param: str
) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": 2, **patch}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_n_streamed_choices_each_reassemble_and_the_finish_chunk_carries_usage(server: RunningServer) -> None:
    body = {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False, "n": 2, "max_tokens": 300, "temperature": 1.0, "seed": 7}  # fmt: skip
    url = f"{server.url}/v1/chat/completions"
    whole = httpx.post(url, json=body, timeout=60).json()
    calls: dict[int, dict[str, str]] = {}
    finishes: list[dict[str, Any]] = []
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: ") :])
            for choice in chunk["choices"]:
                for delta in choice["delta"].get("tool_calls") or []:
                    entry = calls.setdefault(choice["index"], {"name": "", "arguments": ""})
                    entry["name"] += delta.get("function", {}).get("name") or ""
                    entry["arguments"] += delta["function"]["arguments"]
                if choice["finish_reason"]:
                    finishes.append({"reason": choice["finish_reason"], "usage": chunk["usage"]})
    expected = {
        c["index"]: {"name": c["message"]["tool_calls"][0]["function"]["name"], "arguments": c["message"]["tool_calls"][0]["function"]["arguments"]}
        for c in whole["choices"]
    }  # fmt: skip
    assert calls == expected
    assert [f["reason"] for f in finishes] == ["tool_calls", "tool_calls"]
    # Fireworks' style (no stream_options): usage rides on the chunk with the last finish_reason.
    assert finishes[0]["usage"] is None and finishes[1]["usage"] == whole["usage"]


def test_chunk_deltas_of_a_mixed_reply_add_up_to_the_message() -> None:
    text = '<think>Two cities.</think>\nChecking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}\n</tool_call>'  # fmt: skip

    def reader() -> ReplyReader:
        ids = iter(["call_a", "call_b"])
        return ReplyReader(ReasoningParser(), ToolParser(HERMES, lambda: next(ids)))

    whole = reader().parse(text)
    stream, deltas = reader().stream(), []
    for position in range(0, len(text), 3):
        deltas += coalesced_deltas(stream.feed(text[position : position + 3]))
    deltas += coalesced_deltas(stream.finish())
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        assert len(delta) == 1  # one kind of part per chunk
        for call in delta.get("tool_calls", []):
            if "id" in call:
                calls[call["index"]] = {"id": call["id"], **call["function"]}
            else:
                calls[call["index"]]["arguments"] += call["function"]["arguments"]
    assert (
        (reasoning, content) == (whole.reasoning_content, whole.content) == ("Two cities.", "Checking both.")
    )
    expected = [tool_call_dict(c) for c in whole.tool_calls]
    assert [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in (calls[i] for i in sorted(calls))] == expected  # fmt: skip
