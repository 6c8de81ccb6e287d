"""Pure request-translation logic: context length, sampling parameters, body parsing, auth, embeddings."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from ember.server.anthropic.protocol import MessagesRequest
from ember.server.common.api_keys import KeyRing, default_tenant, plain_keys
from ember.server.common.errors import APIError
from ember.server.common.middleware import api_keys_from_env, presented_key
from ember.server.common.preparation import SamplingLimits, build_sampling_params, resolve_max_tokens
from ember.server.common.protocol import param_path, parse_json, validate_body
from ember.server.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from ember.server.openai.serving_embeddings import encode_vector, shorten

LIMITS = SamplingLimits(vocab_size=100, max_n=4)


def raises_400(param: str | None = None, code: str | None = None):
    class _Check:
        def __enter__(self) -> None:
            return None

        def __exit__(self, kind, error, tb) -> bool:
            assert isinstance(error, APIError), f"expected an APIError, got {error!r}"
            assert error.status == 400, error.message
            if param is not None:
                assert error.param == param, (error.param, error.message)
            if code is not None:
                assert error.code == code
            return True

    return _Check()


def test_context_length_truncates_by_default_and_errors_on_request() -> None:
    assert resolve_max_tokens(100, None, 128) == 28  # no max_tokens: the remaining context
    assert resolve_max_tokens(100, 10, 128) == 10
    assert resolve_max_tokens(100, 1000, 128, "truncate") == 28
    with raises_400(param="max_tokens", code="context_length_exceeded"):
        resolve_max_tokens(100, 1000, 128, "error")
    assert resolve_max_tokens(100, 28, 128, "error") == 28


def test_a_prompt_that_fills_the_context_is_always_an_error() -> None:
    for behavior in ("truncate", "error"):
        with raises_400(param="messages", code="context_length_exceeded"):
            resolve_max_tokens(128, 1, 128, behavior, "messages")


def test_sampling_params_follow_the_request() -> None:
    body = validate_body(
        CompletionRequest,
        {
            "prompt": "x",
            "n": 2,
            "temperature": 0,
            "top_k": -1,
            "stop": "\n",
            "logit_bias": {"5": -100},
            "seed": 7,
        },
    )
    params = build_sampling_params(body, LIMITS, max_tokens=9, best_of=3, logprobs=2)
    assert (params.n, params.best_of, params.max_tokens, params.temperature, params.top_k) == (
        2,
        3,
        9,
        0.0,
        0,
    )
    assert (
        params.stop == ["\n"]
        and params.logit_bias == {5: -100.0}
        and params.seed == 7
        and params.logprobs == 2
    )


def test_values_a_request_leaves_out_come_from_the_checkpoints_defaults() -> None:
    from ember.engine.sampling_params import SamplingParams

    # as LLMEngine.default_params holds a checkpoint's temperature, top_p and top_k
    checkpoint = SamplingParams(temperature=0.6, top_p=0.9, top_k=20)
    limits = SamplingLimits(vocab_size=100, max_n=4, defaults=checkpoint)
    omitted = build_sampling_params(validate_body(CompletionRequest, {"prompt": "x"}), limits, max_tokens=4)
    assert (omitted.temperature, omitted.top_p, omitted.top_k, omitted.min_p) == (0.6, 0.9, 20, 0.0)
    body = validate_body(CompletionRequest, {"prompt": "x", "temperature": 1.0, "top_k": -1})
    chosen = build_sampling_params(body, limits, max_tokens=4)
    assert (chosen.temperature, chosen.top_p, chosen.top_k) == (1.0, 0.9, 0), "the request's own values win"


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("top_p", 0.0, "top_p"),
        ("temperature", 1e9, "temperature"),
        ("presence_penalty", 3.0, "presence_penalty"),
        ("n", 5, "n"),
        ("logit_bias", {"nope": 1.0}, "logit_bias"),
        ("logit_bias", {"100": 1.0}, "logit_bias"),
        ("logit_bias", {"3": 500.0}, "logit_bias.3"),
        ("stop_token_ids", [100], "stop_token_ids"),
        ("repetition_penalty", 1e-300, "repetition_penalty"),
    ],
)
def test_out_of_range_sampling_values_name_their_parameter(field: str, value: object, param: str) -> None:
    # A bound the request field declares is refused while validating the body, the rest when building params.
    with raises_400(param=param):
        body = validate_body(CompletionRequest, {"prompt": "x", field: value})
        build_sampling_params(body, LIMITS, max_tokens=4)


def test_every_optional_field_accepts_null_and_unknown_fields_are_kept_for_the_field_policy() -> None:
    for model, required in (
        (CompletionRequest, {"prompt": "x"}),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}]}),
        (EmbeddingRequest, {"input": "x"}),
        (MessagesRequest, {"max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}),
    ):
        nulls = {name: None for name, field in model.model_fields.items() if not field.is_required()}
        parsed = validate_body(model, {**required, **nulls, "some_future_field": {"a": 1}})
        # Not a field of the model: kept aside, so the serving code refuses or logs it (field_policy).
        assert "some_future_field" not in type(parsed).model_fields
        assert parsed.model_extra == {"some_future_field": {"a": 1}}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": -3}, "max_tokens"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "stop": ["a", ""]}, "stop"),
        ({"prompt": "x", "seed": 2**70}, "seed"),
        ({"prompt": [[1, 2], [-1]]}, "prompt"),
        ({}, "prompt"),
    ],
)
def test_wrong_types_and_values_name_the_parameter(payload: dict[str, object], param: str) -> None:
    with raises_400(param=param):
        validate_body(CompletionRequest, payload)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"messages": "hello"}, "messages"),
    ],
)
def test_bad_chat_messages_name_the_parameter(payload: dict[str, object], param: str) -> None:
    with raises_400(param=param):
        validate_body(ChatCompletionRequest, payload)


def test_prompt_forms() -> None:
    def prompts(prompt: object) -> list[str | list[int]]:
        return validate_body(CompletionRequest, {"prompt": prompt}).prompts()

    assert prompts("a") == ["a"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]


def test_body_parsing_errors() -> None:
    for raw, fragment in (
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"prompt": "\xff\xfe"}', "not valid UTF-8"),
    ):
        with pytest.raises(APIError, match=fragment):
            parse_json(raw)
    with pytest.raises(APIError, match="JSON object"):
        validate_body(CompletionRequest, [1, 2])
    assert param_path(("messages", 0, "content")) == "messages[0].content"


def test_auth_keys() -> None:
    assert presented_key({b"authorization": b"Bearer abc"}) == b"abc"
    assert presented_key({b"x-api-key": b"xyz"}) == b"xyz"
    assert presented_key({b"authorization": b"Basic abc"}) is None
    ring = KeyRing(plain_keys(("k1", "k2"), default_tenant("fireworks")))
    assert ring.tenant_for(b"k2") == default_tenant("fireworks") and ring.tenant_for(b"k3") is None
    assert api_keys_from_env({"EMBER_API_KEYS": " a, b ,,"}) == ("a", "b")


def test_embedding_dimensions_truncate_then_renormalise_and_base64_roundtrips() -> None:
    vector = [0.6, 0.8, 0.0, 0.0]
    short = shorten([0.5, 0.5, 0.5, 0.5], 2)
    assert math.isclose(short[0], 1 / math.sqrt(2)) and math.isclose(sum(x * x for x in short), 1.0)
    assert shorten(vector, None) == vector
    decoded = np.frombuffer(base64.b64decode(encode_vector(vector, "base64")), dtype="<f4")
    np.testing.assert_allclose(decoded, vector, rtol=1e-7)
