"""Fields other APIs define that ember does not implement are refused with a 400 naming them (their "off" value
accepted), unknown fields are logged once per server, two different output constraints are refused naming both;
and the new fields through the real SDKs and in streams (#14)."""

from __future__ import annotations

import json
import logging
from typing import Any

import anthropic
import fireworks
import httpx
import openai
import pytest
from live_server import TINY_MODEL, TINY_MODEL_ID, RunningServer

from ember.server.common.field_policy import KnownField
from ember.server.common.unsupported_fields import (
    chat_fields,
    completions_fields,
    embeddings_fields,
    messages_fields,
)

USER = [{"role": "user", "content": "Say hi"}]
BASES = {
    "/completions": {"model": TINY_MODEL, "prompt": "The quick brown fox", "max_tokens": 2, "temperature": 0},
    "/chat/completions": {"model": TINY_MODEL, "messages": USER, "max_tokens": 2, "temperature": 0},
    "/messages": {"model": TINY_MODEL, "messages": USER, "max_tokens": 2, "temperature": 0},
    "/embeddings": {"model": TINY_MODEL, "input": "The quick brown fox"},
}
TABLES = {
    "/completions": completions_fields(),
    "/chat/completions": chat_fields(),
    "/messages": messages_fields(),
    "/embeddings": embeddings_fields(),
}
CASES = [(path, name) for path, table in TABLES.items() for name in sorted(table)]


@pytest.fixture(scope="module")
def api(tiny_server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=f"{tiny_server.url}/v1", timeout=120)


def asking_value(field: KnownField) -> Any:
    """A value of the field that asks for something (none of its off values)."""
    for off in field.off:
        if isinstance(off, bool):
            return not off
        if isinstance(off, int | float):
            return off + 7
        if isinstance(off, list):
            return ["x"]
    return "x-asked-for"


def assert_refused(response: httpx.Response, path: str, name: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if path == "/messages":
        assert error["message"].startswith(name), error  # Anthropic's error shape has no param
    else:
        assert error["param"] == name and error["code"] == "unsupported_parameter", error
    assert name in error["message"]


@pytest.mark.parametrize(("path", "name"), CASES)
def test_a_known_unsupported_field_is_refused_unless_off(api: httpx.Client, path: str, name: str) -> None:
    field = TABLES[path][name]
    if field.gate is None:
        assert_refused(api.post(path, json={**BASES[path], name: asking_value(field)}), path, name)
        return
    # A sampler's parameter is inert while the sampler is off (as in llama.cpp), and the sampler is refused.
    gate = TABLES[path][field.gate]
    assert api.post(path, json={**BASES[path], name: 3}).status_code == 200
    both = {**BASES[path], name: 3, field.gate: asking_value(gate)}
    assert_refused(api.post(path, json=both), path, field.gate)


@pytest.mark.parametrize("path", list(TABLES))
def test_every_off_value_at_once_is_served(api: httpx.Client, path: str) -> None:
    off = {name: field.off[-1] for name, field in TABLES[path].items() if field.gate is None}
    response = api.post(path, json={**BASES[path], **off})
    assert response.status_code == 200, response.text


def test_an_unknown_field_is_served_and_logged_once(
    api: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ember.server"):
        for _ in range(3):
            body = {**BASES["/chat/completions"], "ember_test_unknown_field": {"a": 1}}
            assert api.post("/chat/completions", json=body).status_code == 200
    logged = [r for r in caplog.records if "ember_test_unknown_field" in r.getMessage()]
    assert len(logged) == 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"guided_regex": "[0-9]+", "response_format": {"type": "json_object"}}, "guided_regex"),
        ({"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, "json_schema"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs.choice"),
        (
            {"structured_outputs": {"regex": "a", "whitespace_pattern": " "}},
            "structured_outputs.whitespace_pattern",
        ),
        ({"structured_outputs": {"regx": "a"}}, "structured_outputs.regx"),
        ({"guided_regex": "("}, "guided_regex"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_json": {"type": "nonsense-type"}}, "guided_json"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_grammar": "root ::= ("}, "guided_grammar"),
    ],
)
def test_bad_or_conflicting_constraints_name_their_fields(
    api: httpx.Client, extra: dict[str, Any], param: str
) -> None:
    for path in ("/completions", "/chat/completions"):
        response = api.post(path, json={**BASES[path], **extra})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and param.split(".")[0] in error["message"]
        if len(extra) == 2:
            assert all(name in error["message"] for name in extra)


def test_two_names_of_one_setting_must_agree(api: httpx.Client) -> None:
    chat, completions = BASES["/chat/completions"], BASES["/completions"]
    for path, extra, param in (
        ("/chat/completions", {"thinking": {"type": "enabled"}, "reasoning_effort": "low"}, "thinking"),
        ("/chat/completions", {"max_tokens": 4, "n_predict": 5}, "n_predict"),
        ("/completions", {"logprobs": 1, "top_logprobs": 2}, "top_logprobs"),
    ):
        body = {**(chat if path == "/chat/completions" else completions), **extra}
        response = api.post(path, json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_the_same_constraint_twice_is_one_constraint(api: httpx.Client) -> None:
    body = {**BASES["/completions"], "guided_regex": "[0-9]{3}", "structured_outputs": {"regex": "[0-9]{3}"}}
    body["max_tokens"] = 8
    assert api.post("/completions", json=body).json()["choices"][0]["text"].isdigit()


def test_anthropic_output_config_refusals(api: httpx.Client) -> None:
    schema = {"type": "object"}
    for output_config, named in (
        ({"effort": "low"}, "output_config.effort"),
        ({"format": {"type": "xml", "schema": schema}}, "output_config.format.type"),
        ({"format": {"type": "json_schema", "schema": {"type": "nonsense-type"}}}, "output_config.format"),
    ):
        response = api.post("/messages", json={**BASES["/messages"], "output_config": output_config})
        assert response.status_code == 400 and named in response.json()["error"]["message"], response.text
    high = api.post("/messages", json={**BASES["/messages"], "output_config": {"effort": "high"}})
    assert high.status_code == 200, high.text  # Anthropic's default effort asks for nothing more
    both = {"output_config": {"format": {"type": "json_schema", "schema": schema}}, "output_format": {"type": "json_schema", "schema": {"type": "array"}}}  # fmt: skip
    message = api.post("/messages", json={**BASES["/messages"], **both}).json()["error"]["message"]
    assert "output_config.format" in message and "output_format" in message


def test_streams_carry_token_ids_raw_output_and_kept_stop_strings(api: httpx.Client) -> None:
    def events(path: str, **fields: Any) -> list[dict[str, Any]]:
        body = {**BASES[path], "max_tokens": 8, "stream": True, **fields}
        text = api.post(path, json=body).text
        return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]

    whole = api.post(
        "/completions", json={**BASES["/completions"], "max_tokens": 8, "return_token_ids": True}
    )
    whole_choice = whole.json()["choices"][0]
    chunks = events("/completions", return_token_ids=True, raw_output=True)
    assert chunks[0]["choices"][0]["prompt_token_ids"] == whole_choice["prompt_token_ids"]
    assert sum((c["choices"][0]["token_ids"] for c in chunks), []) == whole_choice["token_ids"]
    assert chunks[-1]["choices"][0]["raw_output"]["completion_token_ids"] == whole_choice["token_ids"]

    chat = events("/chat/completions", return_token_ids=True)
    assert len(chat[0]["prompt_token_ids"]) > 10  # vLLM's place: the first chunk's top level
    assert len(sum((c["choices"][0].get("token_ids", []) for c in chat), [])) == 8

    stop = whole_choice["text"][3:7]
    kept = events("/completions", stop=[stop], include_stop_str_in_output=True)
    assert "".join(c["choices"][0]["text"] for c in kept).endswith(stop)


def test_through_the_real_sdks(tiny_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(
        model=TINY_MODEL, messages=USER, max_tokens=8, extra_body={"guided_choice": ["yes", "no"]}
    )
    assert chat.choices[0].message.content in ("yes", "no")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=TINY_MODEL, messages=USER, extra_body={"use_beam_search": True})
    assert refused.value.body["param"] == "use_beam_search"  # type: ignore[index]

    fw = fireworks.Fireworks(base_url=tiny_server.url, api_key="unused", max_retries=0)
    raw = fw.chat.completions.create(model=TINY_MODEL_ID, messages=USER, max_tokens=3, raw_output=True)
    assert raw.choices[0].raw_output is not None
    assert "<|im_start|>user\nSay hi" in raw.choices[0].raw_output.prompt_fragments[0]
    assert len(raw.choices[0].raw_output.completion_token_ids or []) == 3

    claude = anthropic.Anthropic(base_url=tiny_server.url, api_key="unused", max_retries=0)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}  # fmt: skip
    message = claude.messages.create(
        model=TINY_MODEL,
        max_tokens=16,
        messages=USER,
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert json.loads(message.content[0].text) in ({"ok": True}, {"ok": False})  # type: ignore[union-attr]
