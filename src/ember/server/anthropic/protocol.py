"""The bodies of Anthropic's POST /v1/messages and /v1/messages/count_tokens."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from ember.server.common.protocol import APIModel, NonZeroProbability, Temperature
from ember.server.common.schema_docs import ANTHROPIC_THINKING, ANTHROPIC_TOOL_CHOICE, ANTHROPIC_TOOLS
from ember.structured.constraint_fields import RequestedConstraint, requested_constraint

_USER_BLOCKS = ("text", "tool_result")
_ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")


def _text_of_blocks(blocks: str | list[dict[str, Any]]) -> str:
    if isinstance(blocks, str):
        return blocks
    return "".join(block["text"] for block in blocks if block.get("type") == "text")


def _check_text_blocks(blocks: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
    if isinstance(blocks, list):
        for block in blocks:
            if not isinstance(block, dict):
                raise ValueError(f"a content block must be an object, got {type(block).__name__}")
            if block.get("type") != "text":
                raise ValueError(
                    f"only text content blocks are supported here, got type {block.get('type')!r}"
                )
            if not isinstance(block.get("text"), str):
                raise ValueError("a text content block needs a string field 'text'")
    return blocks


def _check_block(block: dict[str, Any], allowed: tuple[str, ...]) -> None:
    kind = block.get("type")
    if kind not in allowed:
        raise ValueError(
            f"content blocks of type {kind!r} are not supported here; expected {', '.join(allowed)}"
        )
    required = {
        "text": ("text", str),
        "tool_use": ("name", str),
        "tool_result": ("tool_use_id", str),
        "thinking": ("thinking", str),
        "redacted_thinking": ("data", str),
    }[kind]
    if not isinstance(block.get(required[0]), required[1]):
        raise ValueError(f"a {kind} content block needs a string field {required[0]!r}")
    if kind == "tool_use" and not isinstance(block.get("input", {}), dict):
        raise ValueError("a tool_use content block's input must be an object")
    if kind == "tool_use" and not isinstance(block.get("id", ""), str):
        raise ValueError("a tool_use content block's id must be a string")
    if kind == "tool_result":
        content = block.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ValueError(
                "a tool_result content block's content must be a string or a list of text blocks"
            )
        _check_text_blocks(content if isinstance(content, list) else None)


class AnthropicMessage(APIModel):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]

    @model_validator(mode="after")
    def _known_blocks(self) -> AnthropicMessage:
        if isinstance(self.content, list):
            allowed = _USER_BLOCKS if self.role == "user" else _ASSISTANT_BLOCKS
            for block in self.content:
                _check_block(block, allowed)
        return self

    def text(self) -> str:
        return _text_of_blocks(self.content)

    def chat_messages(self) -> list[dict[str, Any]]:
        """This turn in the chat-template form: tool results become `tool` messages (before the user's text),
        tool_use blocks the assistant's tool_calls, thinking blocks its reasoning_content."""
        if isinstance(self.content, str):
            return [{"role": self.role, "content": self.content}]
        if self.role == "user":
            results = [
                {
                    "role": "tool",
                    "tool_call_id": block["tool_use_id"],
                    "content": _text_of_blocks(block.get("content") or ""),
                }
                for block in self.content
                if block["type"] == "tool_result"
            ]
            text = self.text()
            return results + ([{"role": "user", "content": text}] if text or not results else [])
        message: dict[str, Any] = {"role": "assistant", "content": self.text()}
        calls = [
            {
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block["name"], "arguments": json.dumps(block.get("input", {}))},
            }
            for block in self.content
            if block["type"] == "tool_use"
        ]
        if calls:
            message["tool_calls"] = calls
        thinking = "".join(b["thinking"] for b in self.content if b["type"] == "thinking")
        if thinking:
            message["reasoning_content"] = thinking
        return [message]


class OutputConfig(APIModel):
    """Anthropic's output_config: `format` is honoured (a JSON schema the reply must match); `effort` asks for
    a thinking budget ember's templates have no way to set, so only the default ("high") is accepted."""

    format: dict[str, Any] | None = None
    effort: str | None = None

    @field_validator("effort")
    @classmethod
    def _default_effort_only(cls, effort: str | None) -> str | None:
        # "high" is Anthropic's default: asking for it asks for nothing a served model does not already do.
        if effort not in (None, "high"):
            raise ValueError(
                f"effort {effort!r} is not supported by this server (a served model's effort cannot be scaled); "
                'leave it out or send "high" (the default), or turn thinking on or off with `thinking`'
            )
        return effort


class CountTokensRequest(APIModel):
    # Every body field is kept (`model_extra`), so the known-but-unsupported ones are refused and the unknown
    # ones logged (ember.server.common.field_policy).
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: Annotated[list[dict[str, Any]] | None, WithJsonSchema(ANTHROPIC_TOOLS)] = None
    tool_choice: Annotated[dict[str, Any] | None, WithJsonSchema(ANTHROPIC_TOOL_CHOICE)] = None
    thinking: Annotated[dict[str, Any] | None, WithJsonSchema(ANTHROPIC_THINKING)] = None
    generic_tools: bool | None = None  # ember: false refuses tools on templates without tool support
    output_config: OutputConfig | None = None
    output_format: dict[str, Any] | None = None  # the structured-outputs beta's name of output_config.format
    # Prompt caching: ember caches every prompt prefix on its own, so a breakpoint asks for nothing more.
    cache_control: dict[str, Any] | None = None

    @field_validator("system")
    @classmethod
    def _system_text_blocks_only(
        cls, system: str | list[dict[str, Any]] | None
    ) -> str | list[dict[str, Any]] | None:
        return _check_text_blocks(system)

    def chat_messages(self) -> list[dict[str, Any]]:
        """The conversation in the chat-template form: the system prompt first, then the turns."""
        messages = (
            [] if self.system is None else [{"role": "system", "content": _text_of_blocks(self.system)}]
        )
        for message in self.messages:
            messages += message.chat_messages()
        return messages

    def continues_final_message(self) -> bool:
        """A final assistant turn is a prefill: the reply continues its text. ValueError (naming `messages`)
        for one Anthropic refuses: with tool_use blocks, or text ending in whitespace."""
        final = self.messages[-1]
        where = f"messages[{len(self.messages) - 1}]"
        if final.role != "assistant":
            return False
        if isinstance(final.content, list) and any(b["type"] == "tool_use" for b in final.content):
            raise ValueError(f"{where}: a final assistant message (a prefill) cannot hold tool_use blocks")
        text = final.text()
        if text != text.rstrip():
            raise ValueError(f"{where}: final assistant content cannot end with trailing whitespace")
        return True

    def openai_tools(self) -> list[dict[str, Any]]:
        """Anthropic's custom tools as OpenAI function tools; ValueError names a tool this server cannot run."""
        tools: list[dict[str, Any]] = []
        for i, tool in enumerate(self.tools or []):
            if tool.get("type", "custom") != "custom":
                raise ValueError(
                    f"tools[{i}]: server tools of type {tool.get('type')!r} are not available here; "
                    "only custom tools with an input_schema"
                )
            function = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
            if tool.get("description") is not None:
                function["description"] = tool["description"]
            tools.append({"type": "function", "function": function})
        return tools

    def reasoning_effort(self) -> bool | None:
        """`thinking` as the reasoning switch: enabled -> on, disabled -> off; ValueError for anything else."""
        if self.thinking is None:
            return None
        kind = self.thinking.get("type")
        if kind == "disabled":
            return False
        if kind == "enabled":
            budget = self.thinking.get("budget_tokens")
            if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
                raise ValueError("thinking.budget_tokens must be a positive integer")
            return True
        raise ValueError(f"thinking.type must be 'enabled' or 'disabled', got {kind!r}")

    def parallel_tool_calls(self) -> bool:
        return not (self.tool_choice or {}).get("disable_parallel_tool_use", False)

    def output_constraint(self) -> RequestedConstraint | None:
        """output_config.format (or the beta's output_format) as a constraint; ConstraintFieldError (a
        ValueError naming its field) when malformed, or when the two differ."""
        fields: dict[str, Any] = {}
        if self.output_config is not None and self.output_config.format is not None:
            fields["output_config.format"] = self.output_config.format
        if self.output_format is not None:
            fields["output_format"] = self.output_format
        return requested_constraint(fields) if fields else None


class MessagesRequest(CountTokensRequest):
    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: list[str] | None = None
    temperature: Temperature | None = None
    top_p: NonZeroProbability | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    stream: bool | None = None
    metadata: dict[str, Any] | None = None
    raw_output: bool | None = None  # Fireworks: the prompt as the model saw it and the reply before parsing

    @field_validator("stop_sequences")
    @classmethod
    def _stops_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(s == "" for s in value):
            raise ValueError("stop sequences must not be empty")
        return value
