"""The bodies of Anthropic's POST /v1/messages and /v1/messages/count_tokens."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from ember.server.protocol_common import APIModel


def _text_of_blocks(blocks: str | list[dict[str, Any]]) -> str:
    if isinstance(blocks, str):
        return blocks
    return "".join(block["text"] for block in blocks)


def _check_text_blocks(blocks: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
    if isinstance(blocks, list):
        for block in blocks:
            if block.get("type") != "text":
                raise ValueError(f"only text content blocks are supported, got type {block.get('type')!r}")
            if not isinstance(block.get("text"), str):
                raise ValueError("a text content block needs a string field 'text'")
    return blocks


class AnthropicMessage(APIModel):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]

    @field_validator("content")
    @classmethod
    def _text_blocks_only(cls, content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        return _check_text_blocks(content)  # type: ignore[return-value]

    def text(self) -> str:
        return _text_of_blocks(self.content)


class CountTokensRequest(APIModel):
    model: str | None = None
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    thinking: Any = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = ("tools", "tool_choice", "thinking")

    @field_validator("system")
    @classmethod
    def _system_text_blocks_only(
        cls, system: str | list[dict[str, Any]] | None
    ) -> str | list[dict[str, Any]] | None:
        return _check_text_blocks(system)

    def chat_messages(self) -> list[dict[str, str]]:
        """The conversation in the chat-template form: the system prompt first, then the turns."""
        messages = (
            [] if self.system is None else [{"role": "system", "content": _text_of_blocks(self.system)}]
        )
        return messages + [{"role": m.role, "content": m.text()} for m in self.messages]


class MessagesRequest(CountTokensRequest):
    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    top_p: float | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    stream: bool | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _stops_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(s == "" for s in value):
            raise ValueError("stop sequences must not be empty")
        return value
