"""Continuing the final message: the prompt is the rendered chat cut right after the final message's text."""

from __future__ import annotations

from typing import Any

import pytest

from ember.chat.continuation import ContinuationError, continued_prompt
from ember.chat.template import ChatTemplate
from ember.engine.testing import default_tokenizer_and_template

_, SMOL_TEMPLATE = default_tokenizer_and_template()
TRIMMING = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>{% endfor %}"


def render_with(source: str) -> Any:
    template = ChatTemplate(source)
    return lambda messages: template.render(messages, add_generation_prompt=False)


def test_the_prompt_ends_with_the_final_text_and_no_end_of_turn() -> None:
    assert SMOL_TEMPLATE is not None
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"},
    ]
    prompt = continued_prompt(messages, render_with(SMOL_TEMPLATE))
    assert prompt.endswith("<|im_start|>assistant\nThe capital of France is")
    full = ChatTemplate(SMOL_TEMPLATE).render(messages, add_generation_prompt=False)
    assert full.startswith(prompt) and full[len(prompt) :] == "<|im_end|>\n"


def test_the_same_text_earlier_in_the_chat_does_not_move_the_cut() -> None:
    messages = [
        {"role": "user", "content": "Say yes"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "yes"},
    ]
    prompt = continued_prompt(messages, render_with(TRIMMING))
    assert prompt == "<user>Say yes</user><assistant>yes</assistant><user>Again</user><assistant>yes"


def test_an_empty_final_message_opens_its_turn() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]
    assert continued_prompt(messages, render_with(TRIMMING)) == "<user>Hi</user><assistant>"


def test_trailing_whitespace_survives_a_trimming_template() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well, "}]
    assert continued_prompt(messages, render_with(TRIMMING)).endswith("<assistant>Well, ")


@pytest.mark.parametrize(
    ("template", "messages", "wording"),
    [
        ("{% for m in messages %}{{ m.role }}{% endfor %}", [{"role": "user", "content": "x"}], "does not render"),
        (TRIMMING, [], "at least one message"),
        (TRIMMING, [{"role": "user", "content": "a\ue000ember-continue\ue000"}], "reserved"),
    ],
)  # fmt: skip
def test_what_cannot_be_continued_is_an_error(
    template: str, messages: list[dict[str, Any]], wording: str
) -> None:
    with pytest.raises(ContinuationError, match=wording):
        continued_prompt(messages, render_with(template))
