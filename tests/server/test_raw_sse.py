"""The wire format of streams, parsed by hand: OpenAI's data lines and [DONE], Anthropic's named events."""

from __future__ import annotations

import json

import httpx
from live_server import TINY_MODEL, RunningServer


def sse_events(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(event name, data) per event, exactly as a browser's EventSource would split them."""
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                events.append((name, "\n".join(data)))
            name, data = None, []
        elif line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
    assert not data, "the stream ended in the middle of an event"
    return events


def stream(
    server: RunningServer, path: str, body: dict[str, object]
) -> tuple[httpx.Response, list[tuple[str | None, str]]]:
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return response, sse_events(response)


def test_completion_stream_wire_format(tiny_server: RunningServer) -> None:
    response, events = stream(
        tiny_server,
        "/v1/completions",
        {"model": TINY_MODEL, "prompt": "Hi", "max_tokens": 6, "n": 2, "stream": True},
    )
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len({(c["id"], c["created"], c["model"], c["object"]) for c in chunks}) == 1
    assert chunks[0]["object"] == "text_completion" and response.headers["x-request-id"] == chunks[0]["id"]
    with_usage = [c for c in chunks if c["usage"] is not None]
    assert with_usage == [chunks[-1]], "usage goes on the last chunk only"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 12  # both choices
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
    assert all(texts.values())


def test_chat_stream_opens_with_the_role_and_closes_with_done(tiny_server: RunningServer) -> None:
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    _, events = stream(tiny_server, "/inference/v1/chat/completions", {**body, "stream": True})
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert events[-1][1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("length") == 1


def test_stream_options_without_include_usage_sends_no_usage(tiny_server: RunningServer) -> None:
    body = {
        "model": TINY_MODEL,
        "prompt": "Hi",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": False},
    }
    _, events = stream(tiny_server, "/v1/completions", body)
    assert all(json.loads(data)["usage"] is None for _, data in events[:-1])


def test_anthropic_event_sequence(tiny_server: RunningServer) -> None:
    body = {
        "model": TINY_MODEL,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }
    _, events = stream(tiny_server, "/v1/messages", body)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) <= {"content_block_delta"}
    for name, data in events:
        assert json.loads(data)["type"] == name
    delta = json.loads(events[-2][1])
    assert delta["delta"]["stop_reason"] == "max_tokens" and delta["usage"]["output_tokens"] == 4


def test_streamed_echo_carries_the_prompt_and_its_logprobs_first(tiny_server: RunningServer) -> None:
    body = {
        "model": TINY_MODEL,
        "prompt": "One two three",
        "max_tokens": 4,
        "echo": True,
        "logprobs": 1,
        "stream": True,
    }
    _, events = stream(tiny_server, "/v1/completions", body)
    chunks = [json.loads(data) for _, data in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    tokens = [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]]
    offsets = [o for c in chunks for o in c["choices"][0]["logprobs"]["text_offset"]]
    assert chunks[0]["choices"][0]["text"].startswith("One two three")
    assert chunks[0]["choices"][0]["logprobs"]["token_logprobs"][0] is None
    assert "".join(tokens) == text and offsets == sorted(offsets) and offsets[0] == 0
    assert len(tokens) == chunks[-1]["usage"]["prompt_tokens"] + 4
