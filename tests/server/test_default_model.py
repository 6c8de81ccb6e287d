"""End to end on the default model (SmolLM2-135M-Instruct GGUF): the seed document's snippets answer sensibly."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from live_server import RunningServer, start_server

from ember.engine.async_engine import AsyncEngine
from ember.engine.engine_config import SchedulerConfig
from ember.engine.llm_engine import EngineConfig
from ember.models.loader import LoadedModel
from ember.server.common.config import ServerConfig


@pytest.fixture(scope="module")
def default_server(smollm_served_model: LoadedModel) -> Iterator[RunningServer]:
    model = smollm_served_model  # as `ember serve` loads it, once for the session (tests/conftest.py)
    engine = AsyncEngine.from_loaded(
        model, EngineConfig(scheduler=SchedulerConfig(max_model_len=2048), kv_cache_gib=0.25)
    )
    server = start_server(engine, ServerConfig(model_name=model.name))
    yield server
    server.stop()


def test_seed_chat_snippet_answers_the_question(default_server: RunningServer) -> None:
    client = openai.OpenAI(
        base_url=default_server.openai_base, api_key="<YOUR_FIREWORKS_API_KEY>", max_retries=0
    )
    model = default_server.config.model_id
    chat = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=12,
        temperature=0,
    )
    assert "Paris" in chat.choices[0].message.content
    completion = client.completions.create(
        model=model, prompt="The quick brown fox", max_tokens=6, temperature=0
    )
    assert completion.choices[0].text.strip() and completion.usage.completion_tokens == 6


def test_streamed_chat_ends_with_eos_and_usage(default_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=default_server.openai_base, api_key="x", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=default_server.config.model_name,
            messages=[{"role": "user", "content": "Reply with just the word yes."}],
            max_tokens=40,
            temperature=0,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop", "the model should end its turn with <|im_end|>"
    assert "<|im_end|>" not in text and text.strip()
    assert chunks[-1].usage.completion_tokens >= 1


def test_responses_api_answers_and_streams_to_the_end(default_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"{default_server.url}/v1", api_key="x", max_retries=0)
    model = default_server.config.model_name
    first = client.responses.create(
        model=model,
        instructions="You are a helpful assistant.",
        input="What is the capital of France?",
        max_output_tokens=12,
        temperature=0,
    )
    assert "Paris" in first.output_text
    follow_up = client.responses.create(
        model=model, previous_response_id=first.id, input="Thanks!", max_output_tokens=4, temperature=0
    )
    assert follow_up.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    with client.responses.stream(
        model=model, input="Reply with just the word yes.", max_output_tokens=40, temperature=0
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()  # response.completed: the model ended its turn
    assert final.status == "completed" and "".join(deltas) == final.output_text != ""


def test_a_chat_that_sets_no_sampling_samples_as_the_model_card_says(default_server: RunningServer) -> None:
    """The embedded GGUF ships no sampling defaults; its card's temperature 0.2 and top_p 0.9 apply, so an
    unmodified client's first question gets the same reply as one asking for them (same seed)."""
    client = openai.OpenAI(base_url=default_server.openai_base, api_key="x", max_retries=0)
    question = [{"role": "user", "content": "Give me three tips for better sleep."}]

    def reply(**sampling: float) -> str:
        chat = client.chat.completions.create(
            model=default_server.config.model_name, messages=question, max_tokens=24, seed=7, **sampling
        )
        return chat.choices[0].message.content or ""

    reply()  # every later call then finds the same prompt blocks cached and computes the same logits
    carded = reply()
    assert carded and carded == reply(temperature=0.2, top_p=0.9)
    assert carded != reply(temperature=1.0, top_p=1.0), "the neutral defaults would sample differently"
