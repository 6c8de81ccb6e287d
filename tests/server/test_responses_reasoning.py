"""Reasoning through /v1/responses on a tiny thinking template (Qwen3 style): reasoning.effort switches the
template's thinking, the reply's reasoning is a reasoning item (whole and streamed as reasoning_text events),
its tokens are counted in usage, and a reasoning item sent back is rendered into the next prompt."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from live_server import RunningServer
from tools_server import THINKING_TEMPLATE, start_template_server

MODEL = "tiny-thinker"


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    running: RunningServer = start_template_server(MODEL, THINKING_TEMPLATE)
    yield openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0, timeout=60)
    running.stop()


def test_thinking_on_gives_a_reasoning_item(client: openai.OpenAI) -> None:
    # A random model never closes <think> by itself: all of a short reply is reasoning.
    response = client.responses.create(
        model=MODEL,
        input="What is 2+2?",
        reasoning={"effort": "high", "summary": "auto"},
        max_output_tokens=6,
    )
    (item,) = response.output
    assert item.type == "reasoning" and item.id.startswith("rs_") and item.summary == []
    assert item.content[0].type == "reasoning_text" and item.content[0].text
    assert response.output_text == ""
    assert 0 < response.usage.output_tokens_details.reasoning_tokens <= response.usage.output_tokens == 6
    assert response.reasoning.effort == "high"


def test_thinking_off_answers_without_reasoning(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="What is 2+2?", reasoning={"effort": "none"}, max_output_tokens=4
    )
    assert [item.type for item in response.output] == ["message"]
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_streamed_reasoning_adds_up(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input="What is 2+2?", reasoning={"effort": "low"}, max_output_tokens=6
    ) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert events[2].item.type == "reasoning"
    text = "".join(event.delta for event in events if event.type == "response.reasoning_text.delta")
    done = next(event for event in events if event.type == "response.reasoning_text.done")
    assert text and done.text == text
    assert kinds[-1] == "response.incomplete"
    assert events[-1].response.output[0].content[0].text == text


def test_reasoning_sent_back_reaches_the_prompt(client: openai.OpenAI) -> None:
    turn = [
        {"role": "user", "content": "What is 2+2?"},
        {
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "two and two " * 20}],
        },
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    without = [item for item in turn if item.get("type") != "reasoning"]
    with_reasoning = client.responses.input_tokens.count(model=MODEL, input=turn).input_tokens
    assert with_reasoning > client.responses.input_tokens.count(model=MODEL, input=without).input_tokens + 20
