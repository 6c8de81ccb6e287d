"""One generated reply read back as a chat message: reasoning split off first, then tool calls parsed out of
the content. The same pipeline serves whole replies and streams, so streamed deltas always add up to the
non-streamed message (OpenAI chat and Anthropic messages share it)."""

from __future__ import annotations

from dataclasses import dataclass

from ember.chat.reasoning import ReasoningDelta, ReasoningParser, ReasoningStream
from ember.chat.tool_parsers import (
    ToolCall,
    ToolCallDelta,
    ToolCallStream,
    ToolParser,
    ToolStreamDelta,
    assemble,
)


@dataclass(frozen=True)
class ReplyDelta:
    """Exactly one of the three parts is set."""

    reasoning_content: str = ""
    content: str = ""
    tool_call: ToolCallDelta | None = None


@dataclass(frozen=True)
class ParsedReply:
    reasoning_content: str | None  # None: the reply has no reasoning
    content: str
    tool_calls: list[ToolCall]


class ReplyStream:
    """feed(text delta) -> ReplyDeltas; finish() once the reply is complete."""

    def __init__(self, reasoning: ReasoningStream | None, tools: ToolCallStream | None) -> None:
        self._reasoning = reasoning
        self._tools = tools
        self.num_tool_calls = 0

    def feed(self, text: str) -> list[ReplyDelta]:
        if not text:
            return []
        if self._reasoning is None:
            return self._content(text, final=False)
        return self._split(self._reasoning.feed(text), final=False)

    def finish(self) -> list[ReplyDelta]:
        if self._reasoning is None:
            return self._content("", final=True)
        return self._split(self._reasoning.finish(), final=True)

    def _split(self, parts: list[ReasoningDelta], final: bool) -> list[ReplyDelta]:
        out: list[ReplyDelta] = []
        content = ""
        for part in parts:
            if part.reasoning_content:
                out.append(ReplyDelta(reasoning_content=part.reasoning_content))
            content += part.content
        return out + self._content(content, final)

    def _content(self, text: str, final: bool) -> list[ReplyDelta]:
        if self._tools is None:
            return [ReplyDelta(content=text)] if text else []
        deltas = self._tools.feed(text) if text else []
        if final:
            deltas += self._tools.finish()
        out: list[ReplyDelta] = []
        for delta in deltas:
            if delta.tool_call is not None:
                if delta.tool_call.name is not None:
                    self.num_tool_calls += 1
                out.append(ReplyDelta(tool_call=delta.tool_call))
            elif delta.content:
                out.append(ReplyDelta(content=delta.content))
        return out


@dataclass(frozen=True)
class ReplyReader:
    """The parsers of one request's replies: `reasoning` for thinking templates, `tools` when the reply may
    hold tool calls (None: all of the answer is content)."""

    reasoning: ReasoningParser | None = None
    tools: ToolParser | None = None

    @property
    def is_plain(self) -> bool:
        return self.reasoning is None and self.tools is None

    def stream(self) -> ReplyStream:
        return ReplyStream(
            None if self.reasoning is None else self.reasoning.stream(),
            None if self.tools is None else self.tools.stream(),
        )

    def parse(self, text: str) -> ParsedReply:
        stream = self.stream()
        return assemble_reply([*stream.feed(text), *stream.finish()])


def assemble_reply(deltas: list[ReplyDelta]) -> ParsedReply:
    """The message a sequence of reply deltas adds up to."""
    reasoning = "".join(d.reasoning_content for d in deltas)
    calls = assemble([ToolStreamDelta(tool_call=d.tool_call) for d in deltas if d.tool_call is not None])
    content = "".join(d.content for d in deltas)
    return ParsedReply(reasoning or None, content, calls.tool_calls)
