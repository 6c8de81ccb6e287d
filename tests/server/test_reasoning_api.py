"""Reasoning through /v1/chat/completions with the real openai SDK: reasoning_effort switches the template's
thinking, replies split into reasoning_content and content, streamed deltas add up to the whole message."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from live_server import TINY_MODEL, RunningServer
from tools_server import THINKING_TEMPLATE, start_template_server

from ember.chat.plan import ChatInputs, plan_chat
from ember.chat.template import ChatTemplate
from ember.engine.testing import default_tokenizer_and_template
from ember.server.common.prompts import PromptEncoder
from ember.structured import ReasoningSection
from ember.structured.compiler import GrammarCompiler

MODEL = "tiny-thinker"
USER = [{"role": "user", "content": "What is 2+2?"}]
# Thinking off closes the reasoning in the prompt; this grammar then makes even a random model write a
# <think> block and an answer, which the reply parser must still split.
SPLIT_FORMAT = {"type": "regex", "regex": "<think>[a-z]{3,12}</think>[a-z]{2,12}"}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_template_server(MODEL, THINKING_TEMPLATE)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0, timeout=60)


def message_of(chat: Any) -> tuple[str | None, str | None]:
    message = chat.choices[0].message
    return getattr(message, "reasoning_content", None), message.content


def streamed(client: openai.OpenAI, **request: Any) -> tuple[str | None, str, list[str]]:
    """(reasoning, content, order of delta kinds) of a stream."""
    reasoning, content, kinds = "", "", []
    for chunk in client.chat.completions.create(stream=True, **request):
        delta = chunk.choices[0].delta
        part = getattr(delta, "reasoning_content", None)
        if part:
            reasoning += part
            kinds.append("reasoning")
        if delta.content:
            content += delta.content
            kinds.append("content")
    return reasoning or None, content, kinds


@pytest.mark.parametrize("effort", ["high", "low", True])
def test_thinking_replies_are_reasoning_content_and_stream_the_same(
    client: openai.OpenAI, effort: Any
) -> None:
    request = {"model": MODEL, "messages": USER, "max_tokens": 10, "temperature": 0, "extra_body": {"reasoning_effort": effort}}  # fmt: skip
    reasoning, content = message_of(client.chat.completions.create(**request))
    # The template opened <think> and a random model never closes it: the whole reply is reasoning.
    assert reasoning and content == ""
    stream_reasoning, stream_content, kinds = streamed(client, **request)
    assert (stream_reasoning, stream_content) == (reasoning, content) and set(kinds) == {"reasoning"}


def test_reasoning_effort_none_closes_the_thinking_in_the_prompt(client: openai.OpenAI) -> None:
    on = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    for effort in ("none", False):
        off = client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=4, temperature=0, extra_body={"reasoning_effort": effort}
        )  # type: ignore[arg-type]
        reasoning, content = message_of(off)
        assert reasoning is None and content
        assert off.usage.prompt_tokens > on.usage.prompt_tokens


def test_a_think_block_splits_and_streams_reasoning_before_content(client: openai.OpenAI) -> None:
    request = {"model": MODEL, "messages": USER, "max_tokens": 60, "temperature": 0, "response_format": SPLIT_FORMAT, "extra_body": {"reasoning_effort": "none"}}  # fmt: skip
    chat = client.chat.completions.create(**request)
    reasoning, content = message_of(chat)
    assert re.fullmatch("[a-z]{3,12}", reasoning or "") and re.fullmatch("[a-z]{2,12}", content or "")
    stream_reasoning, stream_content, kinds = streamed(client, **request)
    assert (stream_reasoning, stream_content) == (reasoning, content)
    assert kinds == sorted(kinds, key=lambda kind: kind == "content")  # no reasoning after content


def test_reasoning_on_assistant_messages_reaches_the_template(client: openai.OpenAI) -> None:
    tokenizer, _ = default_tokenizer_and_template()
    for field in ("reasoning_content", "reasoning"):
        messages = [*USER, {"role": "assistant", "content": "4", field: "two and two"}, {"role": "user", "content": "And 3+3?"}]  # fmt: skip
        chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)  # type: ignore[arg-type]
        template_messages = [*USER, {"role": "assistant", "content": "4", "reasoning_content": "two and two"}, messages[2]]  # fmt: skip
        prompt = ChatTemplate(THINKING_TEMPLATE).render(template_messages)
        assert "<think>\ntwo and two\n</think>" in prompt
        assert chat.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))


def test_bad_reasoning_effort_is_400(server: RunningServer, tiny_server: RunningServer) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": 2, "reasoning_effort": "extreme"}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning_effort"
    # A template without a thinking switch cannot turn reasoning on; turning it off is what it does anyway.
    body = {"model": TINY_MODEL, "messages": USER, "max_tokens": 2, "reasoning_effort": "high"}
    response = httpx.post(f"{tiny_server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning_effort"
    body["reasoning_effort"] = "none"
    assert httpx.post(f"{tiny_server.url}/v1/chat/completions", json=body, timeout=30).status_code == 200


def test_structured_output_starts_after_the_reasoning() -> None:
    tokenizer, _ = default_tokenizer_and_template()
    encoder = PromptEncoder(tokenizer, tokenizer.vocab_size, THINKING_TEMPLATE)
    response_format = {"type": "json_object"}
    thinking = plan_chat(encoder, ChatInputs(USER, response_format=response_format))
    assert thinking.structured is not None and thinking.structured.reasoning == ReasoningSection(opened=True)
    assert thinking.reader.reasoning is not None and thinking.reader.reasoning.starts_in_reasoning
    # The grammar lets the reasoning run free, then holds the answer to the format.
    matcher = GrammarCompiler(tokenizer, (2,)).matcher(thinking.structured)
    for token in tokenizer.encode("Let me think.</think>\n{}", add_special_tokens=False):
        matcher.accept(token)
    assert matcher.is_accepting
    # Held to the format: plain text after the reasoning is refused (a grammar of anything would take it).
    refusing = GrammarCompiler(tokenizer, (2,)).matcher(thinking.structured)
    *reasoning, answer = tokenizer.encode("Let me think.</think>\nhello", add_special_tokens=False)
    assert tokenizer.decode([answer]) == "hello"
    for token in reasoning:
        refusing.accept(token)
    with pytest.raises(ValueError, match="violates the output grammar"):
        refusing.accept(answer)
    quiet = plan_chat(encoder, ChatInputs(USER, response_format=response_format, reasoning_effort="none"))
    assert quiet.structured is not None and quiet.structured.reasoning is None
