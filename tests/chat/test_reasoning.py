"""Reasoning split (<think>...</think>) whole and streamed, and reasoning_effort -> template switches."""

from __future__ import annotations

import random

import pytest

from ember.chat.reasoning import ReasoningParser, ReasoningSplit, parser_for_template, template_switches
from ember.chat.template import ChatTemplate

QWEN3_LIKE = """{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{%- if enable_thinking is defined and enable_thinking is false %}
<think>

</think>

{%- endif %}
{% endif %}"""
R1_LIKE = "{% for m in messages %}{{ m.content }}{% endfor %}<｜Assistant｜><think>\n"

FIXTURES = [
    (
        False,
        "<think>\nThe user wants 2+2.\nThat is 4.\n</think>\n\nIt is 4.",
        ReasoningSplit("The user wants 2+2.\nThat is 4.", "It is 4."),
    ),
    (False, "It is 4.", ReasoningSplit(None, "It is 4.")),
    (
        False,
        "It is <think>not reasoning</think> 4.",
        ReasoningSplit(None, "It is <think>not reasoning</think> 4."),
    ),
    (False, "<think>cut off in the mid", ReasoningSplit("cut off in the mid", "")),
    (False, "<think>\n\n</think>\n\nDirect.", ReasoningSplit(None, "Direct.")),
    (True, "First, add.\n</think>\n\n4", ReasoningSplit("First, add.", "4")),
    (True, "<think>Opened again.</think>Answer", ReasoningSplit("Opened again.", "Answer")),
]


@pytest.mark.parametrize(("opened", "text", "expected"), FIXTURES)
def test_fixture_outputs_split(opened: bool, text: str, expected: ReasoningSplit) -> None:
    assert ReasoningParser(starts_in_reasoning=opened).parse(text) == expected


@pytest.mark.parametrize(("opened", "text", "expected"), FIXTURES)
def test_streamed_deltas_reassemble(opened: bool, text: str, expected: ReasoningSplit) -> None:
    parser = ReasoningParser(starts_in_reasoning=opened)
    for seed in range(25):
        rng = random.Random(seed)
        stream = parser.stream()
        deltas, position = [], 0
        while position < len(text):
            size = 1 if seed == 0 else rng.randint(1, 6)
            deltas += stream.feed(text[position : position + size])
            position += size
        deltas += stream.finish()
        assert all(bool(d.reasoning_content) != bool(d.content) for d in deltas)  # one part per delta
        reasoning = "".join(d.reasoning_content for d in deltas)
        assert ReasoningSplit(reasoning or None, "".join(d.content for d in deltas)) == expected
        # Reasoning comes first; no reasoning delta follows content.
        kinds = [bool(d.content) for d in deltas]
        assert kinds == sorted(kinds)


def test_parser_follows_the_template_and_prompt() -> None:
    assert parser_for_template("{{ messages }}") is None
    qwen = parser_for_template(QWEN3_LIKE, prompt="<|im_start|>assistant\n")
    assert qwen is not None and not qwen.starts_in_reasoning
    prompt = ChatTemplate(R1_LIKE).render([{"role": "user", "content": "hi"}])
    r1 = parser_for_template(R1_LIKE, prompt=prompt)
    assert r1 is not None and r1.starts_in_reasoning
    assert r1.parse("thinking\n</think>answer") == ReasoningSplit("thinking", "answer")


@pytest.mark.parametrize(
    ("effort", "enabled"),
    [("low", True), ("medium", True), ("high", True), ("none", False), (True, True), (False, False)],
)
def test_reasoning_effort_maps_to_enable_thinking(effort: str | bool, enabled: bool) -> None:
    switches = template_switches(effort, QWEN3_LIKE)
    assert switches == {"enable_thinking": enabled}
    prompt = ChatTemplate(QWEN3_LIKE).render([{"role": "user", "content": "hi"}], **switches)
    assert ("<think>\n\n</think>" in prompt) is not enabled


def test_reasoning_effort_other_switches_and_errors() -> None:
    assert template_switches(None, QWEN3_LIKE) == {}
    assert template_switches("high", R1_LIKE) == {}  # always thinks: no switch to set
    assert template_switches(False, "{% if thinking %}<think>{% endif %}") == {"thinking": False}
    assert template_switches("medium", "{{ reasoning_effort }}") == {"reasoning_effort": "medium"}
    with pytest.raises(ValueError, match="reasoning_effort must be one of"):
        template_switches("extreme", QWEN3_LIKE)
