"""Reasoning (`<think>...</think>`, Qwen3 / DeepSeek-R1 style) split from the answer, whole or streamed, and
`reasoning_effort` mapped onto the chat template's thinking switch.

The output may open with `<think>`, or start inside the reasoning when the prompt already ends with it
(DeepSeek-R1's template). Reasoning ends at `</think>`; a reply cut off before that is all reasoning.
Whitespace around each part is trimmed. `parse(text)` is the reassembly of the streaming parser fed the whole
text, so streamed deltas always add up to the non-streamed message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_WHITESPACE = " \t\r\n"
_THINKING_SWITCH = re.compile(r"{[%{][^%}]*\bthinking\b")  # `thinking` used inside a jinja tag or expression
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")


@dataclass(frozen=True)
class ReasoningSplit:
    reasoning_content: str | None  # None when the reply has no reasoning
    content: str


@dataclass(frozen=True)
class ReasoningDelta:
    reasoning_content: str = ""
    content: str = ""


class _TrimmedPart:
    """Text of one part with leading whitespace dropped and trailing whitespace held until more text."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def push(self, text: str) -> str:
        if not self._started:
            text = text.lstrip(_WHITESPACE)
            self._started = bool(text)
        buffer = self._held + text
        ready = buffer.rstrip(_WHITESPACE)
        self._held = buffer[len(ready) :]
        return ready


class ReasoningStream:
    """feed(delta) -> deltas; finish() once the reply is complete."""

    def __init__(self, start_tag: str, end_tag: str, starts_in_reasoning: bool) -> None:
        self._start_tag = start_tag
        self._end_tag = end_tag
        self._mode = "lead"  # lead -> reasoning -> content, or lead -> content
        self._starts_in_reasoning = starts_in_reasoning
        self._pending = ""
        self._reasoning = _TrimmedPart()
        self._content = _TrimmedPart()
        self._finished = False

    def feed(self, delta: str) -> list[ReasoningDelta]:
        if self._finished:
            raise ValueError("feed() after finish()")
        self._pending += delta
        return self._run(final=False)

    def finish(self) -> list[ReasoningDelta]:
        if self._finished:
            return []
        self._finished = True
        return self._run(final=True)

    def _run(self, final: bool) -> list[ReasoningDelta]:
        out: list[ReasoningDelta] = []
        if self._mode == "lead":
            lead = self._pending.lstrip(_WHITESPACE)
            if lead.startswith(self._start_tag):
                self._pending, self._mode = lead[len(self._start_tag) :], "reasoning"
            elif not final and (not lead or self._start_tag.startswith(lead)):
                return out  # may still become the opening tag
            else:
                self._mode = "reasoning" if self._starts_in_reasoning else "content"
        if self._mode == "reasoning":
            found = self._pending.find(self._end_tag)
            if found >= 0:
                reasoning, self._pending = self._pending[:found], self._pending[found + len(self._end_tag) :]
                self._mode = "content"
            else:
                keep = 0 if final else _partial_suffix(self._pending, self._end_tag)
                reasoning = self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep :]
            text = self._reasoning.push(reasoning)
            if text:
                out.append(ReasoningDelta(reasoning_content=text))
        if self._mode == "content":
            text = self._content.push(self._pending)
            self._pending = ""
            if text:
                out.append(ReasoningDelta(content=text))
        return out


class ReasoningParser:
    """Splits replies of one template's thinking format."""

    def __init__(
        self, start_tag: str = "<think>", end_tag: str = "</think>", starts_in_reasoning: bool = False
    ) -> None:
        if not start_tag or not end_tag:
            raise ValueError("reasoning start and end tags must be non-empty")
        self.start_tag = start_tag
        self.end_tag = end_tag
        self.starts_in_reasoning = starts_in_reasoning

    def stream(self) -> ReasoningStream:
        return ReasoningStream(self.start_tag, self.end_tag, self.starts_in_reasoning)

    def parse(self, text: str) -> ReasoningSplit:
        stream = self.stream()
        deltas = [*stream.feed(text), *stream.finish()]
        reasoning = "".join(d.reasoning_content for d in deltas)
        return ReasoningSplit(reasoning or None, "".join(d.content for d in deltas))


def parser_for_template(chat_template: str | None, prompt: str | None = None) -> ReasoningParser | None:
    """A parser when the template writes <think> blocks, else None. With the rendered prompt, a prompt that
    ends inside an open <think> (the template opened it) makes the reply start in the reasoning."""
    if not chat_template or "<think>" not in chat_template:
        return None
    opened = prompt is not None and prompt.rstrip(_WHITESPACE).endswith("<think>")
    return ReasoningParser(starts_in_reasoning=opened)


def template_switches(reasoning_effort: str | bool | None, chat_template: str | None) -> dict[str, Any]:
    """Template variables that turn thinking on or off for `reasoning_effort` (low/medium/high/none, or a
    boolean). Qwen3 reads `enable_thinking`, DeepSeek-V3.1 `thinking`, gpt-oss `reasoning_effort`; a template
    without such a switch gets {} (its model always or never reasons). ValueError for an unknown effort."""
    if reasoning_effort is None:
        return {}
    if isinstance(reasoning_effort, bool):
        enabled = reasoning_effort
    elif reasoning_effort in REASONING_EFFORTS:
        enabled = reasoning_effort != "none"
    else:
        allowed = ", ".join(REASONING_EFFORTS)
        raise ValueError(f"reasoning_effort must be one of {allowed} or a boolean, got {reasoning_effort!r}")
    template = chat_template or ""
    switches: dict[str, Any] = {}
    if "enable_thinking" in template:
        switches["enable_thinking"] = enabled
    if _THINKING_SWITCH.search(template.replace("enable_thinking", "")):
        switches["thinking"] = enabled
    if "reasoning_effort" in template and isinstance(reasoning_effort, str) and enabled:
        switches["reasoning_effort"] = "low" if reasoning_effort == "minimal" else reasoning_effort
    return switches


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0
