"""Predicted Outputs (`prediction=`) and ember's `prompt_lookup` through the real openai SDK and raw HTTP: the
reply is the same with and without a prediction, usage reports the draft tokens, /metrics counts them under
vLLM's names, and bad values are 400s naming the parameter."""

from __future__ import annotations

import httpx
import openai
import pytest
from live_server import TINY_MODEL_ID, RunningServer
from test_health_metrics_tokenize import parse_prometheus

MESSAGES = [{"role": "user", "content": "Repeat: alpha beta gamma delta alpha beta gamma delta"}]


@pytest.fixture(scope="module")
def client(tiny_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.openai_base, api_key="unused", max_retries=0, timeout=60)


def _spec_counters(server: RunningServer) -> dict[str, float]:
    """The vllm:spec_decode_* samples of GET /metrics by name, summed over their labels."""
    counters: dict[str, float] = {}
    for sample, value in parse_prometheus(httpx.get(f"{server.url}/metrics").text).items():
        name = sample.split("{", 1)[0]
        if name.startswith("vllm:spec_decode_"):
            counters[name] = counters.get(name, 0.0) + value
    return counters


def _details(usage: object) -> tuple[int, int]:
    details = usage.completion_tokens_details  # type: ignore[attr-defined]
    return details.accepted_prediction_tokens, details.rejected_prediction_tokens


def test_chat_prediction_keeps_the_reply_and_fills_the_usage_details(
    client: openai.OpenAI, tiny_server: RunningServer
) -> None:
    plain = client.chat.completions.create(
        model=TINY_MODEL_ID, messages=MESSAGES, max_tokens=40, temperature=0
    )
    text = plain.choices[0].message.content
    assert text
    before = _spec_counters(tiny_server)
    predicted = client.chat.completions.create(
        model=TINY_MODEL_ID,
        messages=MESSAGES,
        max_tokens=40,
        temperature=0,
        prediction={"type": "content", "content": text},
    )
    assert predicted.choices[0].message.content == text
    assert predicted.usage.completion_tokens == plain.usage.completion_tokens
    accepted, rejected = _details(predicted.usage)
    assert accepted > 10
    assert rejected >= 0
    after = _spec_counters(tiny_server)
    assert (
        after["vllm:spec_decode_num_accepted_tokens_total"]
        - before["vllm:spec_decode_num_accepted_tokens_total"]
        >= accepted
    )
    assert (
        after["vllm:spec_decode_num_draft_tokens_total"] - before["vllm:spec_decode_num_draft_tokens_total"]
        >= accepted + rejected
    )
    assert after["vllm:spec_decode_num_drafts_total"] > before["vllm:spec_decode_num_drafts_total"]
    per_pos = after["vllm:spec_decode_num_accepted_tokens_per_pos_total"]
    assert per_pos == after["vllm:spec_decode_num_accepted_tokens_total"]  # summed over positions


def test_streamed_chat_with_text_parts_reports_the_details_in_the_usage_chunk(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model=TINY_MODEL_ID, messages=MESSAGES, max_tokens=30, temperature=0
    )
    text = plain.choices[0].message.content or ""
    half = len(text) // 2
    stream = client.chat.completions.create(
        model=TINY_MODEL_ID,
        messages=MESSAGES,
        max_tokens=30,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        prediction={
            "type": "content",
            "content": [{"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}],
        },
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens
    assert _details(usage)[0] > 5


def test_completions_accept_prediction_and_prompt_lookup(client: openai.OpenAI) -> None:
    prompt = "one two three four five one two three four five one two three"
    plain = client.completions.create(model=TINY_MODEL_ID, prompt=prompt, max_tokens=24, temperature=0)
    text = plain.choices[0].text
    predicted = client.completions.create(
        model=TINY_MODEL_ID,
        prompt=prompt,
        max_tokens=24,
        temperature=0,
        extra_body={
            "prediction": {"type": "content", "content": text},
            "prompt_lookup": {"mode": "on", "num_speculative_tokens": 4, "min_ngram": 1, "max_ngram": 3},
        },
    )
    assert predicted.choices[0].text == text
    assert _details(predicted.usage)[0] > 5
    off = client.completions.create(
        model=TINY_MODEL_ID,
        prompt=prompt,
        max_tokens=24,
        temperature=0,
        extra_body={"prompt_lookup": {"mode": "off"}},
    )
    assert off.choices[0].text == text
    assert _details(off.usage) == (0, 0)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prediction": {"type": "json", "content": "x"}}, "prediction.type"),
        ({"prediction": {"type": "content", "content": [{"type": "image_url", "text": "x"}]}}, None),
        ({"prediction": "just text"}, "prediction"),
        ({"prompt_lookup": {"mode": "always"}}, "prompt_lookup.mode"),
        ({"prompt_lookup": {"num_speculative_tokens": 0}}, "prompt_lookup.num_speculative_tokens"),
        ({"prompt_lookup": {"min_ngram": 4, "max_ngram": 2}}, "prompt_lookup"),
    ],
)
def test_bad_prediction_or_lookup_is_a_400_naming_it(
    tiny_server: RunningServer, extra: dict, param: str | None
) -> None:
    body = {"model": TINY_MODEL_ID, "messages": MESSAGES, "max_tokens": 4, **extra}
    response = httpx.post(f"{tiny_server.openai_base}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    else:
        assert error["param"].startswith("prediction"), error
    ok = httpx.post(
        f"{tiny_server.openai_base}/chat/completions",
        json={"model": TINY_MODEL_ID, "messages": MESSAGES, "max_tokens": 2},
        timeout=60,
    )
    assert ok.status_code == 200
