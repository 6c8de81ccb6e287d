"""response_format through the HTTP API with the real openai SDK: json_object, json_schema (OpenAI's wrapper
and Fireworks' bare `schema`), GBNF grammars, on chat and completions; invalid ones are 400s."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from live_server import TINY_MODEL, RunningServer, start_server

from ember.engine.async_engine import AsyncEngine
from ember.engine.engine_config import SchedulerConfig
from ember.engine.llm_engine import EngineConfig
from ember.models.loader import LoadedModel
from ember.server.common.config import ServerConfig

USER = [{"role": "user", "content": "Describe a city as JSON."}]
CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "population": {"type": "integer", "minimum": 0, "maximum": 50000000},
        "coastal": {"type": "boolean"},
        "districts": {"type": "array", "items": {"enum": ["north", "south", "east", "west"]}, "maxItems": 3},
    },
    "required": ["name", "population", "coastal"],
    "additionalProperties": False,
}
PERSON = {
    "type": "object",
    "properties": {
        "first": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["first", "age", "address"],
    "additionalProperties": False,
}  # fmt: skip
SCORE = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 10}, "label": {"enum": ["good", "bad"]}}, "required": ["score", "label"], "additionalProperties": False}  # fmt: skip
# A random model given a free number writes digits until max_tokens: the tiny model's schemas bound them.
RATING = {"type": "object", "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}, "label": {"enum": ["good", "bad"]}}, "required": ["stars", "label"], "additionalProperties": False}  # fmt: skip
ARITHMETIC = r"""
root ::= term (" " op " " term)*
term ::= [1-9] [0-9]?
op   ::= "+" | "-" | "*"
"""


@pytest.fixture(scope="module")
def default_server(smollm_served_model: LoadedModel) -> Iterator[RunningServer]:
    model = smollm_served_model  # as `ember serve` loads it, once for the session (tests/conftest.py)
    engine = AsyncEngine.from_loaded(
        model, EngineConfig(scheduler=SchedulerConfig(max_model_len=1024), kv_cache_gib=0.25)
    )
    server = start_server(engine, ServerConfig(model_name=model.name))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny(tiny_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.openai_base, api_key="unused", max_retries=0, timeout=60)


def test_json_schema_on_the_default_model_returns_valid_json(default_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=default_server.openai_base, api_key="unused", max_retries=0, timeout=120)
    model = default_server.config.model_id
    formats: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}, CITY),
        ({"type": "json_schema", "schema": PERSON}, PERSON),  # Fireworks' spelling
        ({"type": "json_object", "schema": SCORE}, SCORE),  # Fireworks' json_object with a schema
        ({"type": "json_schema", "json_schema": {"name": "score", "schema": SCORE}}, SCORE),
    ]

    def ask(item: tuple[dict[str, Any], dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
        response_format, _ = item
        chat = client.chat.completions.create(
            model=model,
            messages=USER,
            response_format=response_format,
            max_tokens=120,
            temperature=0.7,
            seed=1,
        )  # type: ignore[call-overload]
        return chat, item[1]

    engine = default_server.engine
    with ThreadPoolExecutor(len(formats)) as pool:
        # Held between steps until all four are queued: they start together and decode as one batch.
        engine.pause()
        try:
            pending = pool.map(ask, formats)
            while engine.stats().num_waiting < len(formats):
                time.sleep(0.005)
        finally:
            engine.resume()
        results = list(pending)
    for chat, schema in results:
        assert chat.choices[0].finish_reason == "stop", chat.choices[0].message.content
        jsonschema.validate(json.loads(chat.choices[0].message.content), schema)


def test_json_object_and_streaming_give_the_same_object(tiny: openai.OpenAI) -> None:
    request: dict[str, Any] = {"model": TINY_MODEL, "messages": USER, "max_tokens": 150, "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "rating", "schema": RATING}}}  # fmt: skip
    whole = tiny.chat.completions.create(**request).choices[0].message.content
    jsonschema.validate(json.loads(whole), RATING)
    chunks = tiny.chat.completions.create(stream=True, **request)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    object_request = {**request, "response_format": {"type": "json_object"}, "max_tokens": 40}
    obj = tiny.chat.completions.create(**object_request)
    text = obj.choices[0].message.content
    assert text.startswith("{") and (
        obj.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict)
    )
    # json_object mode streams the same text too (a random model's free object runs to max_tokens).
    chunks = tiny.chat.completions.create(stream=True, **object_request)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_gbnf_grammar_output_parses_on_chat_and_completions(tiny: openai.OpenAI) -> None:
    grammar = {"type": "grammar", "grammar": ARITHMETIC}
    for seed in range(3):
        chat = tiny.chat.completions.create(
            model=TINY_MODEL,
            messages=USER,
            response_format=grammar,
            max_tokens=30,
            temperature=1.0,
            seed=seed,
        )  # type: ignore[call-overload]
        text = chat.choices[0].message.content
        assert re.fullmatch(r"[1-9][0-9]?( [+*-] [1-9][0-9]?)*", text), text
    # On completions too (response_format rides in the body), with a grammar of one operation: it always
    # completes within max_tokens, so every output must parse whole.
    one_operation = 'root ::= term " " op " " term\nterm ::= [1-9] [0-9]?\nop ::= "+" | "-" | "*"\n'
    for seed in range(3):
        done = tiny.completions.create(
            model=TINY_MODEL, prompt="2 + 2 =", max_tokens=30, temperature=1.0, seed=seed,
            extra_body={"response_format": {"type": "grammar", "grammar": one_operation}},
        )  # fmt: skip
        text = done.choices[0].text
        assert re.fullmatch(r"[1-9][0-9]? [+*-] [1-9][0-9]?", text), text
        assert done.choices[0].finish_reason == "stop", text
    completion = tiny.completions.create(
        model=TINY_MODEL, prompt="2 + 2 =", max_tokens=60, temperature=0, extra_body={"response_format": {"type": "json_schema", "schema": RATING}}
    )  # fmt: skip
    jsonschema.validate(json.loads(completion.choices[0].text), RATING)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}},
        {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": CITY}},
        {"type": "json_schema", "schema": "not a schema"},
        {"type": "grammar", "grammar": "root ::= ( unclosed"},
        {"type": "grammar", "grammar": ""},
        {"type": "yaml"},
        "json",
    ],
)  # fmt: skip
def test_invalid_response_formats_are_400(
    tiny_server: RunningServer, path: str, response_format: Any
) -> None:
    body: dict[str, Any] = {"model": TINY_MODEL, "max_tokens": 2, "response_format": response_format}
    body.update({"messages": USER} if "chat" in path else {"prompt": "Hi"})
    response = httpx.post(f"{tiny_server.url}{path}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and "response_format" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_min_tokens_beyond_what_the_grammar_allows_ends_with_the_grammar(
    tiny: openai.OpenAI, stream: bool
) -> None:
    # The grammar's only token is a stop token and min_tokens bans it; a prediction drafts past the grammar's
    # end. Both were 500s (every token masked), the stream one as an error event after a 200.
    newline = [198]  # "\n" in the default tokenizer
    for extra in (
        {"stop_token_ids": newline, "min_tokens": 3},
        {"min_tokens": 5, "prediction": {"type": "content", "content": "\n\n\n\n"}},
    ):
        kwargs: dict[str, Any] = {
            "model": TINY_MODEL,
            "prompt": "x",
            "max_tokens": 8,
            "extra_body": {"response_format": {"type": "choice", "choices": ["\n"]}, **extra},
        }
        if stream:
            chunks = list(tiny.completions.create(stream=True, **kwargs))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            completion = tiny.completions.create(**kwargs)
            text, finish = completion.choices[0].text, [completion.choices[0].finish_reason]
        assert (text, finish) == ("\n", ["stop"])
