"""Tool calling and prefill on the default model (SmolLM2-135M-Instruct, whose template has no tool support)
through the clients people use, with their default settings (tools and no tool_choice, so auto): the openai SDK
(whole and streamed), the anthropic SDK and LangChain's ChatOpenAI.bind_tools, each through a whole agent loop
(call -> tool result -> final answer); and a question that needs no tool answered in text."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from live_server import RunningServer, start_server

from ember.engine.async_engine import AsyncEngine
from ember.engine.engine_config import SchedulerConfig
from ember.engine.llm_engine import EngineConfig
from ember.models.loader import LoadedModel
from ember.server.common.config import ServerConfig

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
QUESTION = "What's the weather in Paris right now?"
NO_TOOL_QUESTION = "What is 7 times 8?"


@pytest.fixture(scope="module")
def server(smollm_served_model: LoadedModel) -> Iterator[RunningServer]:
    model = smollm_served_model  # as `ember serve` loads it, once for the session (tests/conftest.py)
    engine = AsyncEngine.from_loaded(
        model, EngineConfig(scheduler=SchedulerConfig(max_model_len=2048), kv_cache_gib=0.25)
    )
    running = start_server(engine, ServerConfig(model_name=model.name))
    yield running
    running.stop()


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is 18 degrees and sunny in {city}."


def openai_client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0, timeout=300)


OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city", "parameters": CITY}}]  # fmt: skip


def test_openai_sdk_agent_loop_with_default_settings(server: RunningServer) -> None:
    # tools and nothing else, as most agent code sends them: tool_choice auto, parallel calls allowed
    client = openai_client(server)
    messages: list[dict[str, object]] = [{"role": "user", "content": QUESTION}]
    first = client.chat.completions.create(
        model=server.config.model_name,
        messages=messages,  # type: ignore[arg-type]
        tools=OPENAI_TOOLS,  # type: ignore[arg-type]
        max_tokens=60,
        temperature=0,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": get_weather.invoke({"city": "Paris"})},
    ]
    final = client.chat.completions.create(
        model=server.config.model_name,
        messages=messages,  # type: ignore[arg-type]
        tools=OPENAI_TOOLS,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
    )
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length") and not answer.message.tool_calls
    assert answer.message.content and answer.message.content.strip()


def test_openai_sdk_streamed_call_adds_up_to_the_whole_one(server: RunningServer) -> None:
    client = openai_client(server)
    request = {"model": server.config.model_name, "messages": [{"role": "user", "content": QUESTION}], "tools": OPENAI_TOOLS, "max_tokens": 60, "temperature": 0}  # fmt: skip
    whole = client.chat.completions.create(**request).choices[0]  # type: ignore[call-overload]
    (call,) = whole.message.tool_calls or []
    names, arguments, content, finish, fragments = "", "", "", None, 0
    for chunk in client.chat.completions.create(stream=True, **request):  # type: ignore[call-overload]
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                names += (delta.function and delta.function.name) or ""
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
                    fragments += 1
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and content == ""
    assert (names, arguments) == (call.function.name, call.function.arguments) and fragments > 1
    assert json.loads(arguments)["city"] == "Paris"


def test_a_question_that_needs_no_tool_is_answered_in_text(server: RunningServer) -> None:
    chat = openai_client(server).chat.completions.create(
        model=server.config.model_name,
        messages=[{"role": "user", "content": NO_TOOL_QUESTION}],
        tools=OPENAI_TOOLS,  # type: ignore[arg-type]
        max_tokens=20,
        temperature=0,
    )
    choice = chat.choices[0]
    assert not choice.message.tool_calls and choice.finish_reason in ("stop", "length")
    assert choice.message.content and choice.message.content.strip()


def test_langchain_bind_tools_agent_loop(server: RunningServer) -> None:
    llm = ChatOpenAI(
        base_url=server.openai_base,
        api_key="unused",  # type: ignore[arg-type]
        model=server.config.model_name,
        temperature=0,
        max_tokens=60,  # type: ignore[call-arg]
        max_retries=0,
        timeout=300,
    )
    with_tools = llm.bind_tools([get_weather])
    messages: list[object] = [HumanMessage(QUESTION)]
    reply = with_tools.invoke(messages)  # type: ignore[arg-type]
    assert len(reply.tool_calls) == 1  # type: ignore[attr-defined]
    call = reply.tool_calls[0]  # type: ignore[attr-defined]
    assert call["name"] == "get_weather" and call["args"]["city"] == "Paris"
    messages += [reply, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = with_tools.invoke(messages)  # type: ignore[arg-type]
    assert not final.tool_calls and isinstance(final.content, str) and final.content.strip()  # type: ignore[attr-defined]


def test_anthropic_sdk_agent_loop(server: RunningServer) -> None:
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
    tools = [
        {"name": "get_weather", "description": "Get the current weather in a city", "input_schema": CITY}
    ]
    messages: list[dict[str, object]] = [{"role": "user", "content": QUESTION}]
    first = claude.messages.create(
        model=server.config.model_name,
        max_tokens=60,
        messages=messages,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        extra_body={"temperature": 0},  # this SDK version has no temperature argument
    )
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": get_weather.invoke({"city": "Paris"})}]},
    ]  # fmt: skip
    final = claude.messages.create(
        model=server.config.model_name,
        max_tokens=40,
        messages=messages,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    )
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in final.content] == ["text"] and final.content[0].text.strip()  # type: ignore[union-attr]


def test_a_prefill_is_continued_in_place(server: RunningServer) -> None:
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"},
    ]
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
    message = claude.messages.create(
        model=server.config.model_name,
        max_tokens=4,
        messages=messages,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    )
    assert message.content[0].text.startswith(" Paris")  # type: ignore[union-attr]
    client = openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0, timeout=300)
    chat = client.chat.completions.create(
        model=server.config.model_name,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert (chat.choices[0].message.content or "").startswith(" Paris")
    assert chat.usage is not None and chat.usage.prompt_tokens == message.usage.input_tokens


def test_the_three_sdks_send_the_same_question_and_get_the_same_decision(server: RunningServer) -> None:
    # The tool as each client spells it: LangChain's bind_tools (schema keys properties, required, type; the
    # docstring as description), and the same tool in the OpenAI and Anthropic docs' shapes (type first).
    # Each request asks for raw_output (Fireworks': the prompt as the model saw it and the reply unparsed).
    question = "What's the weather like in Paris right now?"
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    described = "Get the current weather in a city."
    raw: dict[str, dict[str, object]] = {}
    openai_chat = openai_client(server).chat.completions.create(
        model=server.config.model_name,
        messages=[{"role": "user", "content": question}],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "description": described, "parameters": schema},
            }
        ],  # fmt: skip
        max_tokens=8,
        extra_body={"raw_output": True},
    )
    raw["openai"] = openai_chat.choices[0].model_extra["raw_output"]  # type: ignore[index]
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
    message = claude.messages.create(
        model=server.config.model_name,
        max_tokens=8,
        messages=[{"role": "user", "content": [{"type": "text", "text": question}]}],
        tools=[{"name": "get_weather", "description": described, "input_schema": schema}],  # type: ignore[list-item]
        extra_body={"raw_output": True},
    )
    raw["anthropic"] = message.model_extra["raw_output"]  # type: ignore[index]

    def keep_raw(response: httpx.Response) -> None:
        response.read()
        raw["langchain"] = response.json()["choices"][0]["raw_output"]

    llm = ChatOpenAI(
        base_url=server.openai_base,
        api_key="unused",  # type: ignore[arg-type]
        model=server.config.model_name,
        max_tokens=8,  # type: ignore[call-arg]
        max_retries=0,
        extra_body={"raw_output": True},
        http_client=httpx.Client(event_hooks={"response": [keep_raw]}, timeout=300),
    )
    llm.bind_tools([get_weather]).invoke([HumanMessage([{"type": "text", "text": question}])])
    prompts = {name: r["prompt_token_ids"] for name, r in raw.items()}
    assert prompts["openai"] == prompts["anthropic"] == prompts["langchain"]
    decisions = {name: str(r["completion"]).startswith("<tool_call>") for name, r in raw.items()}
    assert decisions == {"openai": True, "anthropic": True, "langchain": True}
