"""OpenAI's Responses API with the real openai SDK against a live server on a tiny random model (a Hermes tool
template): text and message inputs, instructions, function calls and their outputs, json_schema output,
stored conversations (previous_response_id, retrieve, delete, input_items), the typed stream events and
refusals that name their parameter."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest
from live_server import RunningServer
from tools_server import HERMES_TEMPLATE, start_template_server

MODEL = "tiny-hermes"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 8}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "Weather", "parameters": WEATHER}
]
ANSWER = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["answer", "score"],
    "additionalProperties": False,
}


class Answer(pydantic.BaseModel):
    answer: Literal["yes", "no"]
    score: Annotated[int, pydantic.Field(ge=0, le=9)]  # bounded, so a random model's answer is short


ANSWER_FORMAT = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER, "strict": True}}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_template_server(MODEL, HERMES_TEMPLATE)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def post(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/responses", json={"model": MODEL, "max_output_tokens": 2, **body}, timeout=60
    )


def test_text_input_with_instructions(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Say hello", instructions="Be brief.", max_output_tokens=5, temperature=0
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "incomplete"
    assert response.output_text == message.content[0].text != ""
    assert response.usage.output_tokens == 5
    assert (
        response.instructions == "Be brief." and response.max_output_tokens == 5 and response.temperature == 0
    )
    # instructions are a system message in the prompt: the same input without them is shorter
    counted = client.responses.input_tokens.count(model=MODEL, input="Say hello", instructions="Be brief.")
    bare = client.responses.input_tokens.count(model=MODEL, input="Say hello")
    assert counted.input_tokens == response.usage.input_tokens > bare.input_tokens
    # greedy: the same request gives the same text
    again = client.responses.create(
        model=MODEL,
        input="Say hello",
        instructions="Be brief.",
        max_output_tokens=5,
        temperature=0,
        store=False,
    )
    assert again.output_text == response.output_text and again.store is False


def test_message_list_input(client: openai.OpenAI) -> None:
    conversation: list[Any] = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Bonjour"}]},
        {"role": "user", "content": "How are you?"},
    ]
    response = client.responses.create(model=MODEL, input=conversation, max_output_tokens=4)
    assert response.output[0].type == "message"
    items = client.responses.input_items.list(response.id, order="asc").data
    assert [(item.type, item.role) for item in items] == [
        ("message", "developer"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert items[2].content[0].text == "Bonjour" and items[3].content[0].text == "How are you?"
    assert all(item.id for item in items)


def call_weather(client: openai.OpenAI, **request: Any) -> Any:
    defaults = {
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": 80,
    }
    return client.responses.create(model=MODEL, **{**defaults, **request})


def test_function_call_then_its_output_then_an_answer(client: openai.OpenAI) -> None:
    first = call_weather(client, input="What is the weather in Oslo?")
    assert first.status == "completed"
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert call.call_id and call.id.startswith("fc_")
    assert first.tools[0].name == "get_weather" and first.tool_choice == "required"

    # stored: the call's output goes back with previous_response_id, the tools stay optional
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}],
        tools=TOOLS,
        tool_choice="none",
        max_output_tokens=6,
    )
    assert [item.type for item in second.output] == ["message"]
    assert second.previous_response_id == first.id
    listed = client.responses.input_items.list(second.id).data  # newest first
    assert [item.type for item in listed] == ["function_call_output", "function_call", "message"]
    assert listed[1].call_id == call.call_id and listed[0].output == '{"temp": 21}'

    # stateless: the client sends the whole conversation back itself, with the same prompt
    stateless = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'},
    ]
    counted = client.responses.input_tokens.count(model=MODEL, input=stateless, tools=TOOLS)
    assert counted.input_tokens == second.usage.input_tokens


def test_a_named_function_and_allowed_tools(client: openai.OpenAI) -> None:
    other = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    named = call_weather(
        client, input="Weather?", tools=[*TOOLS, other], tool_choice={"type": "function", "name": "get_time"}
    )
    assert [item.name for item in named.output] == ["get_time"]
    allowed = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "get_weather"}],
    }
    narrowed = call_weather(client, input="Weather?", tools=[*TOOLS, other], tool_choice=allowed)
    assert [item.name for item in narrowed.output] == ["get_weather"]


def test_json_schema_text_format(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Is it sunny?", text=ANSWER_FORMAT, max_output_tokens=60
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), ANSWER)
    assert response.text.format.type == "json_schema" and response.text.format.name == "answer"
    parsed = client.responses.parse(
        model=MODEL, input="Is it sunny?", text_format=Answer, max_output_tokens=60
    )
    assert isinstance(parsed.output_parsed, Answer) and parsed.output_parsed.answer in ("yes", "no")
    as_object = client.responses.create(
        model=MODEL, input="JSON please", text={"format": {"type": "json_object"}}, max_output_tokens=40
    )
    if as_object.status == "completed":  # a random model may write a long object; complete ones parse
        assert isinstance(json.loads(as_object.output_text), dict)


def test_stored_responses_chain_retrieve_and_delete(client: openai.OpenAI, server: RunningServer) -> None:
    first = client.responses.create(model=MODEL, input="One", max_output_tokens=3, metadata={"run": "a"})
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, input="Two", max_output_tokens=3
    )
    third = client.responses.create(
        model=MODEL, previous_response_id=second.id, input="Three", max_output_tokens=3
    )
    # the chain's prompt holds every earlier turn: each response reads more tokens than the one before
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens

    assert client.responses.retrieve(first.id).model_dump() == first.model_dump()
    assert first.metadata == {"run": "a"}
    items = client.responses.input_items.list(third.id, order="asc").data
    texts = [item.content[0].text for item in items]
    assert texts == ["One", first.output_text, "Two", second.output_text, "Three"]
    page = client.responses.input_items.list(third.id, limit=2)
    assert [item.id for item in page.data] == [items[4].id, items[3].id] and page.has_more
    rest = client.responses.input_items.list(third.id, limit=10, after=page.last_id)
    assert [item.id for item in rest.data] == [item.id for item in reversed(items[:3])] and not rest.has_more

    # item_reference: an earlier item by id
    referenced = client.responses.create(
        model=MODEL, input=[{"type": "item_reference", "id": items[0].id}], max_output_tokens=2
    )
    assert client.responses.input_items.list(referenced.id).data[0].content[0].text == "One"

    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(second.id)
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(
            model=MODEL, previous_response_id=second.id, input="Four", max_output_tokens=2
        )
    assert error.value.body["param"] == "previous_response_id"
    assert client.responses.retrieve(third.id).id == third.id  # a later response keeps its own conversation

    unstored = client.responses.create(model=MODEL, input="Secret", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(third.id)  # only background responses can be cancelled
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.retrieve(third.id, include=["file_search_call.results"])
    assert error.value.body["param"] == "include[0]"
    assert client.responses.retrieve(third.id, include=["message.output_text.logprobs"]).id == third.id


def wait_until_done(client: openai.OpenAI, response_id: str) -> Any:
    deadline = time.monotonic() + 60
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_background_responses_are_polled_and_cancelled(client: openai.OpenAI) -> None:
    started = client.responses.create(model=MODEL, input="Is it sunny?", text=ANSWER_FORMAT, background=True)
    assert started.background is True and started.status == "in_progress" and started.output == []
    done = wait_until_done(client, started.id)
    assert done.status == "completed" and done.background is True
    jsonschema.validate(json.loads(done.output_text), ANSWER)
    assert client.responses.cancel(started.id).status == "completed"  # finished: returned as it is
    follow_up = client.responses.create(
        model=MODEL, previous_response_id=started.id, input="Why?", max_output_tokens=3
    )
    assert follow_up.usage.input_tokens > done.usage.input_tokens

    long = client.responses.create(
        model=MODEL, input="Write a lot.", max_output_tokens=900, temperature=0, background=True
    )
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled" and cancelled.id == long.id
    assert client.responses.retrieve(long.id).status == "cancelled"


def stream_events(client: openai.OpenAI, **request: Any) -> tuple[list[Any], Any]:
    with client.responses.stream(model=MODEL, **request) as stream:
        events = list(stream)
        return events, stream.get_final_response()


def test_stream_events_add_up_to_the_final_response(client: openai.OpenAI) -> None:
    events, final = stream_events(client, input="Is it sunny?", text=ANSWER_FORMAT, max_output_tokens=60)
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert deltas and set(kinds[4 : 4 + len(deltas)]) == {"response.output_text.delta"}
    assert kinds[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in deltas)
    assert text == final.output_text == events[-2].item.content[0].text
    jsonschema.validate(json.loads(text), ANSWER)
    assert final.status == "completed" and final.usage.output_tokens >= len(deltas)
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == text and stored.usage == final.usage


def test_stream_function_call_events(client: openai.OpenAI) -> None:
    events, final = stream_events(
        client,
        input="Weather?",
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=80,
    )
    kinds = [event.type for event in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "function_call"
    assert "response.function_call_arguments.delta" in kinds
    done = next(event for event in events if event.type == "response.function_call_arguments.done")
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done.arguments == arguments == final.output[0].arguments
    jsonschema.validate(json.loads(arguments), WEATHER)
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]


def test_raw_stream_is_typed_sse_with_obfuscation_unless_turned_off(server: RunningServer) -> None:
    def frames(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        with httpx.stream(
            "POST",
            f"{server.url}/v1/responses",
            json={"model": MODEL, "max_output_tokens": 2, **body},
            timeout=60,
        ) as reply:
            assert reply.headers["content-type"].startswith("text/event-stream")
            blocks = reply.read().decode().strip().split("\n\n")
        parsed = []
        for block in blocks:
            event, data = block.split("\n")
            parsed.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
        return parsed

    body = {"input": "Hi", "stream": True, "max_output_tokens": 3}
    events = frames(body)
    assert all(name == data["type"] for name, data in events)
    assert events[-1][0] == "response.incomplete"
    deltas = [data for name, data in events if name == "response.output_text.delta"]
    assert deltas and all(isinstance(d["obfuscation"], str) for d in deltas)
    plain = frames({**body, "stream_options": {"include_obfuscation": False}})
    assert all("obfuscation" not in data for _, data in plain)


def test_logprobs_on_request(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Hi",
        max_output_tokens=4,
        temperature=0,
        top_logprobs=2,
        include=["message.output_text.logprobs"],
    )
    logprobs = response.output[0].content[0].logprobs
    assert len(logprobs) == 4
    assert "".join(entry.token for entry in logprobs) == response.output_text
    assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in logprobs)


def test_truncation_auto_drops_the_oldest_turns(client: openai.OpenAI) -> None:
    long_turns: list[Any] = []
    for i in range(6):  # ~6 x 200 tokens: more than the 1024-token context
        long_turns += [
            {"role": "user", "content": f"turn {i} " + "word " * 190},
            {"role": "assistant", "content": "ok"},
        ]
    long_turns.append({"role": "user", "content": "last question"})
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model=MODEL, input=long_turns, max_output_tokens=4)
    assert error.value.body["param"] == "input" and error.value.body["code"] == "context_length_exceeded"
    response = client.responses.create(model=MODEL, input=long_turns, max_output_tokens=4, truncation="auto")
    assert response.truncation == "auto" and response.usage.input_tokens < 1024
    assert len(client.responses.input_items.list(response.id, limit=100).data) == len(long_turns)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "background": True, "stream": True}, "stream"),
        ({"input": "x", "background": True, "store": False}, "store"),
        (
            {"input": "x", "background": True, "background_options": {"completion_window": "8h"}},
            "background_options.completion_window",
        ),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": "x", "service_tier": "flex"}, "service_tier"),
        ({"input": "x", "include": ["reasoning.encrypted_content"]}, "include[0]"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        ({"input": "x", "text": {"verbosity": "low"}}, "text.verbosity"),
        ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"input": "x", "temperature": -1}, "temperature"),
        ({"input": "x", "top_logprobs": 21}, "top_logprobs"),
        ({"input": "x", "metadata": {"k": "v" * 513}}, "metadata"),
        ({"input": "x", "previous_response_id": "resp_unknown"}, "previous_response_id"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
        ({"input": [{"type": "banana"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "input"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"type": "item_reference", "id": "msg_unknown"}]}, "input[0].id"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}]},
            "input[0].arguments",
        ),
        ({"input": "x", "tools": [{"type": "function", "name": "f", "strict": "yes"}]}, "tools[0].strict"),
        (
            {
                "input": "x",
                "tools": [{"type": "function", "name": "f"}],
                "tool_choice": {
                    "type": "allowed_tools",
                    "mode": "auto",
                    "tools": [{"type": "function", "name": "g"}],
                },
            },
            "tool_choice.tools",
        ),
        ({"input": "x", "stream_options": {"include_obfuscation": False}}, "stream_options"),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "defer_loading": True}]},
            "tools[0].defer_loading",
        ),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "allowed_callers": ["programmatic"]}]},
            "tools[0].allowed_callers",
        ),
        (
            {"input": [{"type": "reasoning", "summary": [], "encrypted_content": "x"}]},
            "input[0].encrypted_content",
        ),
        ({"input": []}, "input"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"type": "nope"}}]},
            "tools",
        ),
    ],
)
def test_refusals_name_their_parameter(server: RunningServer, body: dict[str, Any], param: str) -> None:
    reply = post(server, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_unknown_ids_are_404_and_the_server_keeps_serving(
    server: RunningServer, client: openai.OpenAI
) -> None:
    for method, path in (
        ("GET", "/v1/responses/resp_nope"),
        ("DELETE", "/v1/responses/resp_nope"),
        ("GET", "/v1/responses/resp_nope/input_items"),
    ):
        reply = httpx.request(method, f"{server.url}{path}", timeout=30)
        assert reply.status_code == 404 and reply.json()["error"]["message"]
    assert client.responses.create(model=MODEL, input="still here", max_output_tokens=2).output_text


def test_a_tools_output_schema_reaches_the_prompt(client: openai.OpenAI) -> None:
    returns = {"type": "object", "properties": {"temp_c": {"type": "number"}}}
    described = [{**TOOLS[0], "output_schema": returns}]
    bare = client.responses.input_tokens.count(model=MODEL, input="Weather?", tools=TOOLS).input_tokens
    counted = client.responses.input_tokens.count(model=MODEL, input="Weather?", tools=described).input_tokens
    assert counted > bare + 10


def test_concurrent_conversations_each_keep_their_own_state(client: openai.OpenAI) -> None:
    def chain(i: int) -> tuple[str, list[str]]:
        first = client.responses.create(model=MODEL, input=f"first {i}", max_output_tokens=2)
        second = client.responses.create(
            model=MODEL, previous_response_id=first.id, input=f"second {i}", max_output_tokens=2
        )
        client.responses.delete(first.id)
        items = client.responses.input_items.list(second.id, order="asc").data
        return f"first {i}", [item.content[0].text for item in items if item.role == "user"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for opening, users in pool.map(chain, range(16)):
            assert users == [opening, opening.replace("first", "second")]


def test_langchain_on_the_responses_api(server: RunningServer) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    def chat(**options: Any) -> ChatOpenAI:
        return ChatOpenAI(
            model=MODEL,
            base_url=f"{server.url}/v1",
            api_key="unused",
            use_responses_api=True,
            max_retries=0,
            **options,
        )

    tool = {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
    }
    caller = chat(max_tokens=80).bind_tools([tool], tool_choice="required", parallel_tool_calls=False)
    asked = caller.invoke("Weather in Oslo?")
    (call,) = asked.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER)
    history = [HumanMessage("Weather in Oslo?"), asked, ToolMessage('{"temp": 21}', tool_call_id=call["id"])]
    answer = chat(max_tokens=4).bind_tools([tool], tool_choice="none").invoke(history)
    assert answer.tool_calls == [] and answer.text
    streamed = "".join(chunk.text for chunk in chat(max_tokens=4).stream("Hello"))
    assert streamed
