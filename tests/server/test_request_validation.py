"""Client mistakes from #12 that were 500s (or an error event inside a 200 stream) are 400s in the error envelope
naming the parameter, on every route, and the server keeps serving: bodies nested past the depth limit,
NaN / Infinity and out-of-range sampling values, wrong JSON types at every level of the fine-tuning, dataset and
adapter bodies, and tool-call arguments nested too deep."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fine_tuning_server import ACCOUNT, TINY_MODEL, TuningServer, jsonl, start_tuning_server, write_tiny_model

pytestmark = pytest.mark.timeout(300)

USER = [{"role": "user", "content": "Hi"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = "/v1/messages"
MINIMAL_BODIES: dict[str, dict[str, Any]] = {
    CHAT: {"model": TINY_MODEL, "messages": USER, "max_tokens": 2},
    COMPLETIONS: {"model": TINY_MODEL, "prompt": "Hi", "max_tokens": 2},
    "/v1/embeddings": {"model": TINY_MODEL, "input": "Hi"},
    "/v1/tokenize": {"model": TINY_MODEL, "prompt": "Hi"},
    "/v1/detokenize": {"model": TINY_MODEL, "tokens": [1]},
    MESSAGES: {"model": TINY_MODEL, "messages": USER, "max_tokens": 2},
    "/v1/messages/count_tokens": {"model": TINY_MODEL, "messages": USER},
    "/v1/fine_tuning/jobs": {"model": TINY_MODEL, "training_file": "file-x"},
    f"/v1/accounts/{ACCOUNT}/datasets": {"datasetId": "x"},
    f"/v1/accounts/{ACCOUNT}/supervisedFineTuningJobs": {"dataset": "x", "baseModel": TINY_MODEL},
    "/v1/adapters": {"name": "x", "path": "/nowhere"},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TuningServer]:
    root = tmp_path_factory.mktemp("validation")
    running = start_tuning_server(write_tiny_model(root / "model"), root / "data", max_body_bytes=4_000_000)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server: TuningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def post_raw(http: httpx.Client, path: str, raw: str) -> httpx.Response:
    return http.post(path, content=raw.encode(), headers={"content-type": "application/json"})


def assert_400(response: httpx.Response, path: str, param: str | None, message: str | None = None) -> None:
    assert response.status_code == 400, response.text[:500]
    body = response.json()
    if path.startswith(MESSAGES):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
        text = body["error"]["message"]
    else:
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["type"] == "invalid_request_error" and error["param"] == param, error
        text = error["message"]
    if message is not None:
        assert message in text, text


def still_serving(http: httpx.Client) -> None:
    response = http.post(CHAT, json={"model": TINY_MODEL, "messages": USER, "max_tokens": 2})
    assert response.status_code == 200, response.text
    health = http.get("/health").json()
    assert health["status"] == "ok"


def nested_array(levels: int) -> str:
    return "[" * levels + "]" * levels


# -- nesting depth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(MINIMAL_BODIES))
def test_a_body_nested_1000_deep_is_a_400_on_every_json_route(http: httpx.Client, path: str) -> None:
    # RecursionError inside json.loads: a 500 before, on every JSON route.
    for raw in ('{"x": ' + nested_array(1000) + "}", nested_array(100_000)):
        assert_400(post_raw(http, path, raw), path, None, "nested more than 256 levels deep")
    still_serving(http)


@pytest.mark.parametrize("path", list(MINIMAL_BODIES))
def test_a_field_nested_past_the_limit_is_named(http: httpx.Client, path: str) -> None:
    # 600 levels parse, but pydantic, the grammar measures or a template's tojson would recurse through them.
    body = json.dumps({**MINIMAL_BODIES[path], "extra_field": None})
    raw = body.replace('"extra_field": null', '"extra_field": ' + nested_array(600))
    assert_400(post_raw(http, path, raw), path, "extra_field", "extra_field: JSON nested more than 256")
    still_serving(http)


def test_a_json_schema_900_levels_deep_is_a_400(http: httpx.Client) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(450):  # 900 levels of JSON: each level is an object and its properties
        schema = {"type": "object", "properties": {"a": schema}}
    response_format = {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}
    for path, body in ((CHAT, MINIMAL_BODIES[CHAT]), (COMPLETIONS, MINIMAL_BODIES[COMPLETIONS])):
        response = http.post(path, json={**body, "response_format": response_format})
        assert_400(response, path, "response_format", "nested more than 256 levels deep")
    still_serving(http)


def test_a_body_just_inside_the_depth_limit_is_served(http: httpx.Client) -> None:
    deep: Any = "leaf"
    for _ in range(254):  # the body is level 1, chat_template_kwargs level 2
        deep = [deep]
    body = {**MINIMAL_BODIES[CHAT], "chat_template_kwargs": {"unused": deep}}
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text[:300]


def test_deeply_nested_tool_call_arguments_are_a_400(http: httpx.Client) -> None:
    # A string inside the body, parsed later for the chat template: a RecursionError (500) before.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": nested_array(5000)}}
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]}]
    response = http.post(CHAT, json={"model": TINY_MODEL, "messages": messages, "max_tokens": 2})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["param"].startswith("messages"), response.text
    still_serving(http)


# -- sampling values ----------------------------------------------------------------------------------------

OUT_OF_RANGE: list[tuple[str, str, object]] = [
    # (route, parameter, value): each was served (or failed mid-stream) before, or must stay refused
    (CHAT, "repetition_penalty", 1e-300),  # NaN logits: an error event inside a 200 stream before
    (CHAT, "repetition_penalty", 1e300),
    (CHAT, "repetition_penalty", 0),
    (CHAT, "temperature", -0.5),
    (CHAT, "temperature", 1e6),
    (CHAT, "top_p", 0),
    (CHAT, "top_p", 1.5),
    (CHAT, "min_p", -0.1),
    (CHAT, "typical_p", 2),
    (CHAT, "top_k", -2),
    (CHAT, "presence_penalty", 2.5),
    (CHAT, "frequency_penalty", -3),
    (CHAT, "logit_bias", {"5": 101}),
    (CHAT, "seed", 2**64),
    (CHAT, "seed", -(2**63) - 1),
    (CHAT, "n", 0),
    (CHAT, "n", 10**30),
    (CHAT, "max_tokens", 0),
    (CHAT, "max_completion_tokens", -1),
    (CHAT, "min_tokens", -1),
    (CHAT, "top_logprobs", 21),
    (CHAT, "temperature", 10**400),  # an integer no float holds
    (COMPLETIONS, "logprobs", -1),
    (COMPLETIONS, "best_of", 0),
    (COMPLETIONS, "echo_last", -1),
    (COMPLETIONS, "repetition_penalty", 1e-300),
    (MESSAGES, "temperature", -1),
    (MESSAGES, "top_p", 0),
    (MESSAGES, "top_k", -5),
    (MESSAGES, "max_tokens", 0),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "param", "value"), OUT_OF_RANGE)
def test_out_of_range_sampling_values_are_400_naming_them(
    http: httpx.Client, path: str, param: str, value: object, stream: bool
) -> None:
    body = {**MINIMAL_BODIES[path], param: value, "stream": stream}
    response = post_raw(http, path, json.dumps(body))
    named = f"{param}.5" if param == "logit_bias" else param  # the bias of token "5"
    assert_400(response, path, named, named)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize(
    "param",
    [
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
    ],
)
def test_non_finite_sampling_values_are_400(http: httpx.Client, param: str, literal: str) -> None:
    # json.loads reads NaN and Infinity, and 1e400 overflows to inf: none is a number a sampler can use.
    raw = json.dumps({**MINIMAL_BODIES[CHAT], "stream": True})[:-1] + f', "{param}": {literal}}}'
    response = post_raw(http, CHAT, raw)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["param"] in (param, None) and error["type"] == "invalid_request_error", error


def test_a_non_finite_logit_bias_is_400(http: httpx.Client) -> None:
    raw = json.dumps(MINIMAL_BODIES[CHAT])[:-1] + ', "logit_bias": {"5": 1e400}}'
    assert_400(post_raw(http, CHAT, raw), CHAT, "logit_bias.5")


def test_boundary_values_are_served(http: httpx.Client) -> None:
    body = {
        **MINIMAL_BODIES[CHAT],
        "temperature": 100,
        "top_p": 1,
        "min_p": 1,
        "typical_p": 1,
        "repetition_penalty": 0.01,
        "presence_penalty": -2,
        "frequency_penalty": 2,
        "logit_bias": {"5": -100},
        "seed": 2**64 - 1,
        "top_k": 10**30,  # larger than the vocabulary: no truncation
        "stream": True,
    }
    response = http.post(CHAT, json=body)
    assert response.status_code == 200 and "server_error" not in response.text, response.text[:500]
    assert response.text.rstrip().endswith("data: [DONE]")


# -- wrong JSON types in the fine-tuning, dataset and adapter bodies ------------------------------------------

JOBS = "/v1/fine_tuning/jobs"
SFT = f"/v1/accounts/{ACCOUNT}/supervisedFineTuningJobs"
DATASETS = f"/v1/accounts/{ACCOUNT}/datasets"
WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    (JOBS, {"hyperparameters": 5}, "hyperparameters"),
    (JOBS, {"method": 5}, "method"),
    (JOBS, {"method": {"supervised": {"hyperparameters": []}}}, "method.supervised.hyperparameters"),
    (JOBS, {"hyperparameters": {"n_epochs": {}}}, "hyperparameters.n_epochs"),
    (
        JOBS,
        {"hyperparameters": {"learning_rate_multiplier": "fast"}},
        "hyperparameters.learning_rate_multiplier",
    ),
    (JOBS, {"model": ["m"]}, "model"),
    (JOBS, {"training_file": None}, "training_file"),
    (JOBS, {"seed": "7"}, "seed"),
    (SFT, {"outputModel": 5}, "outputModel"),
    (SFT, {"baseModel": {}}, "baseModel"),
    (SFT, {"epochs": "three"}, "epochs"),
    (SFT, {"learningRate": [0.1]}, "learningRate"),
    (SFT, {"loraRank": 1.5}, "loraRank"),
    (SFT, {"earlyStop": None}, "earlyStop"),
    (DATASETS, {"datasetId": 5}, "datasetId"),
    (DATASETS, {"dataset": 5}, "dataset"),
    (DATASETS, {"dataset": {"displayName": 5}}, "dataset.displayName"),
    ("/v1/adapters", {"name": 5}, "name"),
    ("/v1/adapters", {"path": ""}, "path"),
]


@pytest.mark.parametrize(("path", "change", "param"), WRONG_TYPES)
def test_wrong_json_types_are_400_naming_the_field(
    http: httpx.Client, path: str, change: dict[str, Any], param: str
) -> None:
    response = http.post(path, json={**MINIMAL_BODIES[path], **change})
    assert_400(response, path, param)
    still_serving(http)


def test_an_upload_with_deeply_nested_tool_arguments_is_rejected_not_a_500(http: httpx.Client) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": nested_array(5000)}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    row = {
        "messages": [*USER, {"role": "assistant", "content": None, "tool_calls": [call]}],
        "tools": tools,
    }
    response = http.post(
        "/v1/files", files={"file": ("t.jsonl", jsonl([row]))}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 400, response.text[:500]
    still_serving(http)


def test_numbers_too_big_to_store_are_400_and_listings_keep_working(http: httpx.Client) -> None:
    rows = [{"messages": [*USER, {"role": "assistant", "content": "Hello."}]}] * 3
    upload = http.post("/v1/files", files={"file": ("t.jsonl", jsonl(rows))}, data={"purpose": "fine-tune"})
    assert upload.status_code == 200, upload.text
    job = {"model": TINY_MODEL, "training_file": upload.json()["id"]}
    assert http.post(f"{DATASETS}", json={"datasetId": "numbers"}).status_code == 200
    assert (
        http.post(f"{DATASETS}/numbers:upload", files={"file": ("t.jsonl", jsonl(rows))}).status_code == 200
    )
    sft = {"dataset": "numbers", "baseModel": TINY_MODEL}
    cases = [
        (JOBS, {**job, "seed": 10**30}, "seed"),  # OverflowError in SQLite: a 500 before
        (JOBS, {**job, "hyperparameters": {"n_epochs": 10**30}}, "hyperparameters.n_epochs"),
        (
            JOBS,
            {**job, "hyperparameters": {"learning_rate_multiplier": 1e308}},
            "hyperparameters.learning_rate_multiplier",
        ),
        (SFT, {**sft, "learningRate": 1e308}, "learningRate"),  # shown as an inf multiplier: listings failed
        (SFT, {**sft, "loraRank": 10**30}, "loraRank"),
    ]
    for path, body, param in cases:
        assert_400(http.post(path, json=body), path, param)
    assert http.get(JOBS).status_code == 200
    assert http.get(SFT).status_code == 200


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "tool_result", "tool_use_id": "t1", "content": 5}],  # AttributeError: a 500 before
        [{"type": "tool_result", "tool_use_id": "t1", "content": [5]}],  # same
        [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "image"}]}],
    ],
)
def test_wrong_anthropic_content_blocks_are_400(http: httpx.Client, content: list[Any]) -> None:
    body = {**MINIMAL_BODIES[MESSAGES], "messages": [{"role": "user", "content": content}]}
    assert_400(http.post(MESSAGES, json=body), MESSAGES, None)
    still_serving(http)


def test_a_tool_use_id_must_be_a_string(http: httpx.Client) -> None:
    turns = [
        *USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": 5, "name": "f", "input": {}}]},
    ]
    body = {**MINIMAL_BODIES[MESSAGES], "messages": turns}
    assert_400(http.post(MESSAGES, json=body), MESSAGES, None, "id must be a string")
