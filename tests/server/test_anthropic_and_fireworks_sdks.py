"""The real anthropic and fireworks-ai SDKs against a live server on a tiny random model."""

from __future__ import annotations

import anthropic
import fireworks
import pytest
from live_server import TINY_MODEL, TINY_MODEL_ID, RunningServer

USER = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def claude(tiny_server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=tiny_server.url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def fw(tiny_server: RunningServer) -> fireworks.Fireworks:
    return fireworks.Fireworks(base_url=tiny_server.url, api_key="unused", max_retries=0)


def test_anthropic_messages_create_and_count_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=TINY_MODEL, max_tokens=5, system="Be brief.", messages=USER)
    assert message.role == "assistant" and message.content[0].type == "text"
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5
    counted = claude.messages.count_tokens(model=TINY_MODEL, system="Be brief.", messages=USER)
    assert counted.input_tokens == message.usage.input_tokens


def test_anthropic_stop_sequence_is_reported(claude: anthropic.Anthropic) -> None:
    free = (
        claude.messages.create(model=TINY_MODEL, max_tokens=10, messages=USER, extra_body={"temperature": 0})
        .content[0]
        .text
    )
    stop = free[2:5]
    assert stop.strip(), f"greedy text {free!r} gives no usable stop sequence"  # deterministic: never skipped
    message = claude.messages.create(
        model=TINY_MODEL, max_tokens=10, messages=USER, extra_body={"temperature": 0}, stop_sequences=[stop]
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == free[: free.index(stop)]  # and the text ends before it


def test_anthropic_stream_text_matches_the_final_message(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=TINY_MODEL, max_tokens=6, messages=USER, extra_body={"temperature": 0}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == text and final.usage.output_tokens == 6
    whole = claude.messages.create(
        model=TINY_MODEL, max_tokens=6, messages=USER, extra_body={"temperature": 0}
    )
    assert whole.content[0].text == text


def test_anthropic_errors_are_typed(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-9", max_tokens=5, messages=USER)
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=TINY_MODEL, max_tokens=5, messages=[{"role": "system", "content": "x"}])
    assert info.value.body["error"]["type"] == "invalid_request_error"


def test_fireworks_sdk_chat_completion_and_stream(fw: fireworks.Fireworks) -> None:
    chat = fw.chat.completions.create(
        model=TINY_MODEL_ID, messages=USER, max_tokens=4, perf_metrics_in_response=True
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 4
    assert chat.perf_metrics["generated-tokens"] == 4  # asked for here; the completion below does not ask
    completion = fw.completions.create(
        model=TINY_MODEL_ID, prompt="The quick brown fox", max_tokens=3, logprobs=1
    )
    assert completion.usage.completion_tokens == 3 and completion.perf_metrics is None
    chunks = list(fw.chat.completions.create(model=TINY_MODEL_ID, messages=USER, max_tokens=3, stream=True))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_fireworks_models_without_a_data_directory(fw: fireworks.Fireworks) -> None:
    """The control plane reads what the server serves; uploads need a data directory and say so."""
    [model] = list(fw.models.list(account_id="fireworks"))
    assert model.name == TINY_MODEL_ID and model.kind == "HF_BASE_MODEL" and model.tunable is False
    assert (
        model.base_model_details is not None and model.base_model_details.checkpoint_format is None
    )  # not a HF folder
    assert list(fw.lora.list(account_id="fireworks")) == []
    with pytest.raises(fireworks.NotFoundError) as disabled:
        fw.models.create(account_id="fireworks", model_id="x", model={})
    assert disabled.value.body["error"]["code"] == "fine_tuning_disabled"  # type: ignore[index]
