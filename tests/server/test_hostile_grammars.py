"""Grammars that crashed (SIGSEGV), stalled or broke generation in #12 are 400s in OpenAI's envelope, with no
backtrace, and the server keeps serving."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from live_server import TINY_MODEL, RunningServer

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def ref_chain(steps: int) -> dict[str, Any]:
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(steps)}
    defs[f"d{steps}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def schema_format(schema: object) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "ref_chain_5000": (schema_format(ref_chain(5000)), r"\$ref chain is 5001, over the limit of 100"),
    "gbnf_chain_5000": ({"type": "grammar", "grammar": "\n".join(["root ::= r0", *(f"r{i} ::= r{i + 1}" for i in range(5000)), 'r5000 ::= "a"'])}, "number of rules is 5002"),
    "regex_a_1000000": ({"type": "regex", "regex": "a{1000000}"}, "repetition bound"),
    "regex_nested": ({"type": "regex", "regex": "((a|aa){100}){100}"}, "over llguidance's limits"),
    "pattern_a_1000000": (schema_format({"type": "string", "pattern": "^a{1000000}$"}), "repetition bound"),
    "anyof_5000": (schema_format({"anyOf": [{"type": "object"}] * 5000}), "anyOf alternatives .* is 5000"),
    "gbnf_a_1000000": ({"type": "grammar", "grammar": 'root ::= "a"{1000000}'}, "repetition bound"),
    "lark_3000_alternatives": ({"type": "grammar", "grammar": "start: r\nr: " + " | ".join(f'"a{i}" r' for i in range(3000)) + ' | "end"'}, "alternatives of rule 'r' is 3001"),
    "schema_60_deep": (schema_format(nested(60)), "nesting depth is 121, over the limit of 100"),  # deeper: the body limit (test_request_validation)
    "choice_66000": ({"type": "choice", "choices": [str(i) for i in range(66_000)]}, "number of choices is 66000"),
}  # fmt: skip


@pytest.fixture(scope="module")
def http(tiny_server: RunningServer) -> httpx.Client:
    with httpx.Client(base_url=tiny_server.url, timeout=120) as client:
        yield client


def assert_clean_400(response: httpx.Response, param: str, message: str) -> None:
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    text = error["message"]
    assert text.startswith(param)
    for leak in ("backtrace", "panicked", "Traceback", "<unknown>", "src/"):
        assert leak not in text, text
    assert len(text) < 1500
    assert re.search(message, text), text


def still_serving(http: httpx.Client) -> None:
    response = http.post(COMPLETIONS, json={"model": TINY_MODEL, "prompt": "ok", "max_tokens": 2})
    assert response.status_code == 200, response.text
    schema = {"type": "object", "properties": {"x": {"enum": ["a", "b"]}}, "required": ["x"], "additionalProperties": False}  # fmt: skip
    response = http.post(
        CHAT,
        json={
            "model": TINY_MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 10,
            "response_format": schema_format(schema),
        },
    )
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["choices"][0]["message"]["content"])["x"] in ("a", "b")


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_response_formats_are_400_and_the_server_lives(
    http: httpx.Client, path: str, case: str
) -> None:
    response_format, message = HOSTILE[case]
    body: dict[str, Any] = {"model": TINY_MODEL, "max_tokens": 4, "response_format": response_format}
    body.update({"messages": [{"role": "user", "content": "Hi"}]} if path == CHAT else {"prompt": "Hi"})
    assert_clean_400(http.post(path, json=body), "response_format", message)
    still_serving(http)


def test_a_hostile_tool_schema_is_400_and_the_server_lives(http: httpx.Client) -> None:
    parameters = {
        "type": "object",
        "properties": {"x": {"$ref": "#/$defs/d0"}},
        "$defs": ref_chain(5000)["$defs"],
    }
    body = {
        "model": TINY_MODEL,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}],
        "tool_choice": "required",
    }
    assert_clean_400(http.post(CHAT, json=body), "tools", r"\$ref chain is 5001, over the limit of 100")
    still_serving(http)
