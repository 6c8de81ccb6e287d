"""Every class of bad input gets the right status and OpenAI's error envelope, and the server keeps serving."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from live_server import TINY_MODEL, RunningServer

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]


def assert_envelope(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture(scope="module")
def http(tiny_server: RunningServer) -> httpx.Client:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        yield client


def still_serving(http: httpx.Client) -> None:
    response = http.post(COMPLETIONS, json={"model": TINY_MODEL, "prompt": "ok", "max_tokens": 2})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"model": TINY_MODEL, "messages": []}, "messages"),
        (CHAT, {"model": TINY_MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        (CHAT, {"model": TINY_MODEL, "messages": "Hi"}, "messages"),
        (CHAT, {"model": TINY_MODEL, "messages": USER, "temperature": "hot"}, "temperature"),
        (CHAT, {"model": TINY_MODEL, "messages": USER, "temperature": -1}, "temperature"),
        (CHAT, {"model": TINY_MODEL, "messages": USER, "top_p": 7}, "top_p"),
        (CHAT, {"model": TINY_MODEL, "messages": USER, "max_tokens": -5}, "max_tokens"),
        (CHAT, {"model": TINY_MODEL, "messages": USER, "n": 100000}, "n"),
        (CHAT, {"model": TINY_MODEL, "messages": USER, "top_logprobs": 50, "logprobs": True}, "top_logprobs"),
        (
            CHAT,
            {
                "model": TINY_MODEL,
                "messages": USER,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "generic_tools": False,  # the template has no tool support, and the fallback is refused
            },
            "tools",
        ),
        (
            CHAT,
            {"model": TINY_MODEL, "messages": USER, "response_format": {"type": "json_schema", "schema": 3}},
            "response_format",
        ),
        (CHAT, {"model": TINY_MODEL, "messages": USER, "reasoning_effort": "high"}, "reasoning_effort"),
        (
            CHAT,
            {
                "model": TINY_MODEL,
                "messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}],
            },
            "messages[0].tool_calls[0].function.name",
        ),
        (
            CHAT,
            {"model": TINY_MODEL, "messages": [{"role": "user", "content": "\ud800"}]},
            "messages[0].content",
        ),
        (COMPLETIONS, {"model": TINY_MODEL, "prompt": ""}, "prompt"),
        (COMPLETIONS, {"model": TINY_MODEL, "prompt": []}, "prompt"),
        (COMPLETIONS, {"model": TINY_MODEL, "prompt": [10**9]}, "prompt"),
        (COMPLETIONS, {"model": TINY_MODEL, "prompt": "x", "logprobs": 10**6}, "logprobs"),
        (COMPLETIONS, {"model": TINY_MODEL, "prompt": "x", "max_tokens": 1e300}, "max_tokens"),
        (COMPLETIONS, {"model": TINY_MODEL, "prompt": "x", "best_of": 3, "n": 2, "stream": True}, "best_of"),
        (COMPLETIONS, {"model": TINY_MODEL, "prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
        (COMPLETIONS, {"model": TINY_MODEL}, "prompt"),
        ("/v1/embeddings", {"model": TINY_MODEL, "input": []}, "input"),
        ("/v1/embeddings", {"model": TINY_MODEL, "input": "x", "dimensions": 10**6}, "dimensions"),
        ("/v1/detokenize", {"tokens": [10**9]}, "tokens"),
    ],
)
def test_invalid_values_are_400_naming_the_parameter(
    http: httpx.Client, path: str, body: dict, param: str
) -> None:
    # json.dumps escapes the lone surrogate as \\ud800, which is valid JSON but not valid Unicode text.
    response = http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert_envelope(response, 400, param=param)
    still_serving(http)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2, 3]", b'{"prompt": "\xff\xfe", "max_tokens": 2}', b"", b'"just a string"'],
)
def test_malformed_bodies_are_400(http: httpx.Client, raw: bytes) -> None:
    response = http.post(COMPLETIONS, content=raw, headers={"content-type": "application/json"})
    assert_envelope(response, 400)
    still_serving(http)


def test_null_for_every_optional_field_and_unknown_fields_are_accepted(http: httpx.Client) -> None:
    body = {
        "model": None, "prompt": "Hi", "max_tokens": 2, "temperature": None, "top_p": None, "n": None, "stop": None,
        "logprobs": None, "echo": None, "seed": None, "stream": None, "stream_options": None, "user": None,
        "logit_bias": None, "presence_penalty": None, "frequency_penalty": None, "best_of": None, "suffix": None,
        "a_field_from_the_future": {"x": [1, 2]},
    }  # fmt: skip
    assert http.post(COMPLETIONS, json=body).status_code == 200
    chat = {"model": TINY_MODEL, "messages": USER, "max_tokens": 2, "tools": None, "tool_choice": None,
            "response_format": None, "logprobs": None, "top_logprobs": None, "max_completion_tokens": None}  # fmt: skip
    assert http.post(CHAT, json=chat).status_code == 200


def test_unknown_model_and_route_are_404(http: httpx.Client) -> None:
    assert_envelope(
        http.post(CHAT, json={"model": "gpt-17", "messages": USER}),
        404,
        param="model",
        code="model_not_found",
    )
    assert_envelope(http.get("/v1/no/such/route"), 404)
    assert_envelope(http.get("/v1/models/accounts/fireworks/models/other"), 404, code="model_not_found")


def test_wrong_method_is_405_with_the_envelope(http: httpx.Client) -> None:
    assert_envelope(http.get(COMPLETIONS), 405)


def test_oversized_bodies_are_413(http: httpx.Client, tiny_server: RunningServer) -> None:
    huge = b'{"prompt": "' + b"a" * (tiny_server.config.max_body_bytes + 10) + b'"}'
    assert_envelope(http.post(COMPLETIONS, content=huge, headers={"content-type": "application/json"}), 413)

    def chunked() -> object:
        yield huge[: len(huge) // 2]
        yield huge[len(huge) // 2 :]

    assert_envelope(
        http.post(COMPLETIONS, content=chunked(), headers={"content-type": "application/json"}), 413
    )
    still_serving(http)


def test_a_small_declared_length_does_not_let_a_chunked_body_past_the_limit(
    http: httpx.Client, tiny_server: RunningServer
) -> None:
    # The limit trusts a declared Content-Length only without Transfer-Encoding, which would frame the body.
    huge = b'{"prompt": "' + b"a" * (tiny_server.config.max_body_bytes + 10) + b'"}'
    chunks = (
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (huge[:4096], huge[4096:])) + b"0\r\n\r\n"
    )
    host, port = tiny_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST "
            + COMPLETIONS.encode()
            + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 20\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 413), reply[:200]  # refused: by the HTTP parser (400) or by the limit (413)
    still_serving(http)


def test_anthropic_routes_use_anthropic_error_shape(http: httpx.Client) -> None:
    response = http.post("/v1/messages", json={"model": TINY_MODEL, "messages": USER})  # no max_tokens
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: is required"},
    }
